"""Tamiyo's GNN policy: one categorical distribution per model graph over WAIT and
GERMINATE(layer, kernel), plus a graph-level value estimate.

Two equivalent paths:

* ``forward(x, edge_index, batch, num_graphs)`` — the reference path through
  torch_geometric's ``GCNConv`` and global pooling.
* ``forward_batch(batch)`` / ``distributions`` / ``log_probs`` — the fast path over a
  :class:`~models.graph_batch.GraphBatch` from :func:`~models.graph_batch.collate`. Same
  ``GCNConv`` parameters and maths, but the normalised adjacency D^-1/2 (A + I) D^-1/2 is built
  once per batch in numpy and each layer applies it directly (a few shifted multiply-adds for
  chain-like graphs, else one CSR ``sparse.mm``): no ``Batch.from_data_list``, no per-layer
  ``gcn_norm``, no [E, H] message tensors. The tests check both paths agree.

Edges are made undirected in ``collate``: a layer's health both depends on what feeds
it and affects what it feeds, and GCNConv only aggregates along edge direction (source ->
target), so a directed chain would let information flow one way only and leave the first
layer with no neighbours.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import NamedTuple, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GCNConv, global_max_pool, global_mean_pool

from models.graph import FEATURE_NAMES
from models.graph_batch import ActionLayout, GraphBatch, split_padded

#: Inference runs batches in chunks of about this many nodes, so activations ([nodes, 64]
#: float32) stay in a 2 MB L2. Measured with 8-16 layer graphs, one thread, for chunks of 1,024
#: to 6,144 nodes and none: 1,024 graphs ran at ~60k graphs/s unchunked and ~96-107k in chunks of
#: 2,048 nodes; at 128-512 graphs 2,048 was as fast as any other size.
INFERENCE_CHUNK_NODES = 2048


@dataclass
class PolicyConfig:
    """Architecture of :class:`TamiyoPolicyGNN` (everything needed to rebuild it)."""

    node_feature_dim: int = len(FEATURE_NAMES)
    hidden_dim: int = 64
    num_gnn_layers: int = 3
    num_kernels: int = 3
    dropout: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PolicyConfig":
        """Strict: unknown keys raise ``ValueError``; missing keys take defaults."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown PolicyConfig keys: {sorted(unknown)}")
        return cls(**data)


class PolicyOutput(NamedTuple):
    node_logits: Tensor  # [N_total, K]
    wait_logits: Tensor  # [G]
    values: Tensor  # [G]


class PolicyLogProbs(NamedTuple):
    """Training view of a batch. Row g holds graph g's actions in action-index order.

    log_probs: float32 [G, A_max], -inf on illegal actions and on padding (cols >= num_actions[g]);
        pick taken actions with ``log_probs.gather(1, actions[:, None])``.
    num_actions: int64 [G], 1 + N_g * K.
    entropy: float32 [G], entropy over legal actions (no NaN from the -inf entries).
    values: float32 [G].
    """

    log_probs: Tensor
    num_actions: Tensor
    entropy: Tensor
    values: Tensor


class DistributionPolicy(Protocol):
    """What the decision code needs from a policy (GNN or heuristic)."""

    version: str

    @property
    def num_kernels(self) -> int: ...

    def padded_distributions(
        self, batch: GraphBatch, masks: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def distributions(self, batch: GraphBatch, masks: Sequence[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]: ...


class TamiyoPolicyGNN(nn.Module):
    """Node-encoder MLP -> residual GCN stack -> mean+max pooling -> heads.

    Heads: value (graph scalar), WAIT logit (graph scalar) and K kernel logits per node
    (from the node embedding plus its graph's pooled embedding). ``version`` identifies the
    weights in decision records; the caller sets it (e.g. the registry version).
    """

    def __init__(self, config: PolicyConfig | None = None):
        super().__init__()
        self.config = cfg = config or PolicyConfig()
        h = cfg.hidden_dim
        self.version: str = "untrained"
        # Node encoder MLP: Linear -> ReLU -> dropout -> Linear (dropout applied in _encode).
        self.encoder_in = nn.Linear(cfg.node_feature_dim, h)
        self.encoder_out = nn.Linear(h, h)
        self.gnn_layers = nn.ModuleList(
            GCNConv(h, h, cached=False, add_self_loops=True, normalize=True) for _ in range(cfg.num_gnn_layers)
        )
        self.value_head = nn.Sequential(nn.Linear(2 * h, h), nn.ReLU(), nn.Linear(h, 1))
        self.wait_head = nn.Sequential(nn.Linear(2 * h, h), nn.ReLU(), nn.Linear(h, 1))
        # Node action head = MLP over [node embedding, pooled graph embedding], with the
        # first layer split so the graph term is computed once per graph.
        self.action_node_in = nn.Linear(h, h)
        self.action_graph_in = nn.Linear(2 * h, h, bias=False)
        self.action_out = nn.Linear(h, cfg.num_kernels)

    @property
    def num_kernels(self) -> int:
        return self.config.num_kernels

    # ------------------------------------------------------------------ forward passes

    def _heads(self, h: Tensor, pooled: Tensor, batch: Tensor) -> PolicyOutput:
        # The three first layers that read the pooled graph embedding (WAIT, value, and the
        # graph term of the node head, with the node head's bias) are one product; the node
        # head then adds h @ W to that graph term gathered per node, in one addmm.
        hd = self.config.hidden_dim
        wait_in, value_in = self.wait_head[0], self.value_head[0]
        graph = F.linear(pooled, torch.cat((wait_in.weight, value_in.weight, self.action_graph_in.weight)),
                         torch.cat((wait_in.bias, value_in.bias, self.action_node_in.bias)))
        hidden = F.relu(graph[:, : 2 * hd])
        node_hidden = torch.addmm(graph[:, 2 * hd:].index_select(0, batch), h, self.action_node_in.weight.t())
        return PolicyOutput(
            node_logits=self.action_out(node_hidden.relu_()),
            wait_logits=self.wait_head[2](hidden[:, :hd]).squeeze(-1),
            values=self.value_head[2](hidden[:, hd:]).squeeze(-1),
        )

    def _encode(self, x: Tensor, dropout: bool) -> Tensor:
        h = self.encoder_in(x).relu_()  # fresh output that addmm's backward does not need
        return self.encoder_out(F.dropout(h, p=self.config.dropout, training=dropout))

    def forward(self, x: Tensor, edge_index: Tensor, batch: Tensor, num_graphs: int) -> PolicyOutput:
        """Reference path. x [N_total, F], edge_index [2, E_total] (pass undirected edges, as
        :func:`collate` builds), batch [N_total] long -> PolicyOutput([N_total, K], [G], [G])."""
        h = self._encode(x, self.training)
        for conv in self.gnn_layers:
            h = h + F.relu(conv(h, edge_index))
            h = F.dropout(h, p=self.config.dropout, training=self.training)
        pooled = torch.cat(
            (global_mean_pool(h, batch, size=num_graphs), global_max_pool(h, batch, size=num_graphs)), dim=1
        )
        return self._heads(h, pooled, batch)

    def forward_batch(self, gb: GraphBatch, dropout: bool | None = None) -> PolicyOutput:
        """Fast path over a collated batch; same maths and parameters as :meth:`forward`.
        ``dropout`` defaults to ``self.training``."""
        active = self.training if dropout is None else dropout
        g = gb.num_graphs
        h = self._encode(gb.x, active)
        for conv in self.gnn_layers:
            agg = gb.propagation.apply(conv.lin(h), conv.bias).relu_()  # fresh tensor: in-place is autograd-safe
            # Without autograd the residual reuses agg's memory: a fresh [N, H] tensor per op costs
            # more than the add itself (allocation of ~1 MB blocks).
            h = h + agg if torch.is_grad_enabled() else agg.add_(h)
            h = F.dropout(h, p=self.config.dropout, training=active)
        hd = h.shape[1]
        counts = torch.from_numpy(np.maximum(np.diff(gb.ptr), 1).astype(np.float32))[:, None]
        mean = h.new_zeros(g, hd).index_add_(0, gb.batch, h) / counts
        idx = gb.batch[:, None].expand(-1, hd)
        mx = h.new_zeros(g, hd).scatter_reduce(0, idx, h, "amax", include_self=False)
        return self._heads(h, torch.cat((mean, mx), dim=1), gb.batch)

    # ------------------------------------------------------------------ distributions

    def _masked_logits(
        self, gb: GraphBatch, masks: Sequence[np.ndarray], dropout: bool | None = None
    ) -> tuple[Tensor, ActionLayout, Tensor]:
        """Padded logits [G, A_max] with -inf on illegal/padding, plus the layout and values."""
        out = self.forward_batch(gb, dropout)
        lay = gb.layout(self.num_kernels)
        legal = lay.padded_mask(masks)
        g = gb.num_graphs
        flat = out.wait_logits.new_full((g * lay.a_max,), float("-inf"))
        flat = flat.index_put((torch.from_numpy(lay.wait_flat),), out.wait_logits)
        flat = flat.index_put((torch.from_numpy(lay.node_flat),), out.node_logits.reshape(-1))
        logits = torch.where(legal, flat.view(g, lay.a_max), float("-inf"))
        return logits, lay, out.values

    def padded_distributions(
        self, batch: GraphBatch, masks: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masked softmax. Returns (probs float64 [G, A_max] — 0 on illegal actions and
        padding, each row sums to 1 —, num_actions int64 [G], values float64 [G]).

        Batches of more than :data:`INFERENCE_CHUNK_NODES` nodes run in chunks of whole graphs
        (graphs are independent), so activations stay in cache."""
        lay = batch.layout(self.num_kernels)
        legal = lay.legal(masks)
        with torch.inference_mode():
            outs = [self.forward_batch(chunk, dropout=False) for chunk in batch.chunks(INFERENCE_CHUNK_NODES)]
            out = outs[0] if len(outs) == 1 else PolicyOutput(*(torch.cat(parts) for parts in zip(*outs)))
        probs = lay.masked_softmax(out.wait_logits.numpy(), out.node_logits.numpy(), legal)
        return probs, lay.counts, out.values.numpy().astype(np.float64)

    def distributions(self, batch: GraphBatch, masks: Sequence[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
        """Per-graph action probabilities (float64 [1 + N_g * K] each) and values [G].

        Inference: no gradients and no dropout, whatever the module's mode.
        """
        probs, counts, values = self.padded_distributions(batch, masks)
        return split_padded(probs, counts), values

    def log_probs(self, batch: GraphBatch, masks: Sequence[np.ndarray]) -> PolicyLogProbs:
        """Differentiable masked log-softmax for training (dropout follows ``self.training``);
        see :class:`PolicyLogProbs`."""
        logits, lay, values = self._masked_logits(batch, masks)
        logp = torch.log_softmax(logits, dim=1)
        finite = torch.isfinite(logp)
        safe = torch.where(finite, logp, 0.0)
        entropy = -(safe.exp() * safe).masked_fill(~finite, 0.0).sum(dim=1)
        return PolicyLogProbs(logp, torch.from_numpy(lay.counts), entropy, values)
