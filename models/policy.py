"""Tamiyo's GNN policy: one categorical distribution per model graph over WAIT and
GERMINATE(layer, kernel), plus a graph-level value estimate.

Two equivalent paths:

* ``forward(x, edge_index, batch, num_graphs)`` — the reference path through
  torch_geometric's ``GCNConv`` and global pooling.
* ``forward_batch(batch)`` / ``distributions`` / ``log_probs`` — the fast path over a
  :class:`GraphBatch` from :func:`collate`. Same ``GCNConv`` parameters and maths, but the
  normalised adjacency D^-1/2 (A + I) D^-1/2 is built once per batch in numpy and each layer
  is one matrix product: no ``Batch.from_data_list``, no per-layer ``gcn_norm``, no [E, H]
  message tensors. Batches of up to ``DENSE_MAX_NODES`` nodes (a decision for a few models)
  get a dense matrix, larger ones a sparse CSR one; inference masks and normalises in numpy.
  The tests check both paths agree.

Edges are made undirected in :func:`collate`: a layer's health both depends on what feeds
it and affects what it feeds, and GCNConv only aggregates along edge direction (source ->
target), so a directed chain would let information flow one way only and leave the first
layer with no neighbours.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import asdict, dataclass, field, fields
from types import ModuleType
from typing import Callable, NamedTuple, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.graph import FEATURE_NAMES, ModelGraph

# Up to this many nodes a batch's propagation matrix is dense: for one graph of 8-16 layers a dense
# product is several times cheaper than torch's sparse CSR one, and it stays cheap for a handful.
DENSE_MAX_NODES = 128


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


@dataclass
class GraphBatch:
    """Many ModelGraphs as one disjoint graph; nodes of graph g are rows ptr[g]:ptr[g+1].

    x: float32 [N_total, F]; edge_index: int64 [2, E_total], undirected (each pair in both
    directions, deduplicated, no self-loops); batch: int64 [N_total] graph id per node;
    ptr: numpy int64 [G + 1]. ``x_np``/``batch_np`` are the numpy views of the same data.
    adj: float32 [N_total, N_total], the GCN propagation matrix D^-1/2 (A + I) D^-1/2
    (row = target node), so one GCN layer is ``adj @ (x W) + b``; dense up to
    ``DENSE_MAX_NODES`` nodes, sparse CSR above.
    """

    x: Tensor
    edge_index: Tensor
    batch: Tensor
    ptr: np.ndarray
    x_np: np.ndarray
    batch_np: np.ndarray
    adj: Tensor
    _layouts: dict = field(default_factory=dict, repr=False)

    @property
    def num_graphs(self) -> int:
        return len(self.ptr) - 1

    @property
    def num_nodes(self) -> np.ndarray:
        """int64 [G] nodes per graph."""
        return np.diff(self.ptr)

    def layout(self, num_kernels: int) -> "ActionLayout":
        """Where each graph's actions sit in a padded [G, A_max] matrix (cached per K)."""
        lay = self._layouts.get(num_kernels)
        if lay is None:
            lay = self._layouts[num_kernels] = ActionLayout.build(self.ptr, self.batch_np, num_kernels)
        return lay


@dataclass
class ActionLayout:
    """Index arrays (numpy int64) that scatter per-graph action vectors into a padded
    [G, A_max] matrix. Kept in numpy so a layout cached under inference_mode is reusable
    in autograd.

    counts: [G] actions per graph; a_max: max(counts); wait_flat: [G] flat position of WAIT;
    node_flat: [N_total * K] flat positions of node logits (row-major node_logits);
    concat_flat: [sum(counts)] flat position of each entry of the concatenated per-graph vectors.
    """

    counts: np.ndarray
    a_max: int
    wait_flat: np.ndarray
    node_flat: np.ndarray
    concat_flat: np.ndarray

    @classmethod
    def build(cls, ptr: np.ndarray, batch_np: np.ndarray, k: int) -> "ActionLayout":
        g = len(ptr) - 1
        if g == 1:  # one graph (a single decision): its actions in order, no padding
            positions = np.arange(1 + int(ptr[1]) * k, dtype=np.int64)
            return cls(counts=positions[-1:] + 1, a_max=len(positions), wait_flat=positions[:1],
                       node_flat=positions[1:], concat_flat=positions)
        counts = 1 + np.diff(ptr) * k
        a_max = int(counts.max()) if g else 1
        rows = np.arange(g, dtype=np.int64)
        local = np.arange(len(batch_np), dtype=np.int64) - ptr[batch_np]
        node_flat = (batch_np * a_max + 1 + local * k)[:, None] + np.arange(k, dtype=np.int64)
        starts = np.zeros(g + 1, dtype=np.int64)
        np.cumsum(counts, out=starts[1:])
        total = int(starts[-1])
        concat_flat = np.arange(total, dtype=np.int64) + np.repeat(rows * a_max - starts[:-1], counts)
        return cls(
            counts=counts,
            a_max=a_max,
            wait_flat=rows * a_max,
            node_flat=node_flat.reshape(-1),
            concat_flat=concat_flat,
        )

    def padded_mask(self, masks: Sequence[np.ndarray]) -> Tensor:
        """bool [G, A_max] from per-graph legal masks (padding is False)."""
        return torch.from_numpy(self.padded_mask_np(masks))

    def padded_mask_np(self, masks: Sequence[np.ndarray]) -> np.ndarray:
        """:meth:`padded_mask` as a numpy array."""
        g = len(self.counts)
        if len(masks) != g:
            raise ValueError(f"{len(masks)} masks for {g} graphs")
        if g == 1:  # no padding
            if len(masks[0]) != self.counts[0]:
                raise ValueError("mask lengths do not match 1 + N * K per graph")
            out = np.array(masks[0], dtype=bool).reshape(1, -1)
            if not out[0, 0]:
                raise ValueError("WAIT (index 0) must always be legal")
            return out
        lengths = np.fromiter((len(m) for m in masks), dtype=np.int64, count=g)
        if not np.array_equal(lengths, self.counts):
            raise ValueError("mask lengths do not match 1 + N * K per graph")
        flat = np.concatenate(masks).astype(bool, copy=False) if g else np.zeros(0, dtype=bool)
        out = np.zeros(g * self.a_max, dtype=bool)
        out[self.concat_flat] = flat
        if g and not out[:: self.a_max].all():
            raise ValueError("WAIT (index 0) must always be legal")
        return out.reshape(g, self.a_max)


def collate(graphs: Sequence[ModelGraph], dense_max_nodes: int = DENSE_MAX_NODES) -> GraphBatch:
    """Concatenate graphs into one :class:`GraphBatch` with numpy (no torch_geometric Batch).

    Node ids are offset per graph, edges are made undirected and deduplicated, and the GCN
    normalisation (self-loops, symmetric degree scaling) is computed once here. The propagation
    matrix is dense when the batch has at most ``dense_max_nodes`` nodes.
    """
    g = len(graphs)
    if g == 1:  # one decision: no offsets to apply
        x, ei, ptr, batch_np = _one_graph(graphs[0])
        n = len(batch_np)
    else:
        x, ei, ptr, batch_np = _concatenated(graphs)
        n = int(ptr[-1])
    if n <= dense_max_nodes:
        adj, edge_index = _dense_propagation(ei, n)
    else:
        adj, edge_index = _sparse_propagation(ei, n)
    return GraphBatch(
        x=torch.from_numpy(x),
        edge_index=torch.from_numpy(edge_index),
        batch=torch.from_numpy(batch_np),
        ptr=ptr,
        x_np=x,
        batch_np=batch_np,
        adj=adj,
    )


def _one_graph(graph: ModelGraph) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x float32, edges int64, ptr, batch) of a batch of one graph."""
    n = graph.node_features.shape[0]
    ei = graph.edge_index.astype(np.int64, copy=False).reshape(2, -1)
    if ei.size and (ei.min() < 0 or ei.max() >= n):
        raise ValueError("edge_index refers to a node outside its graph")
    # A copy, as for several graphs: the batch never shares memory with the caller's features.
    return (np.array(graph.node_features, dtype=np.float32, order="C"), ei,
            np.array([0, n], dtype=np.int64), np.zeros(n, dtype=np.int64))


def _concatenated(graphs: Sequence[ModelGraph]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x float32, batch-offset edges int64, ptr, batch) of several graphs."""
    g = len(graphs)
    counts = np.fromiter((gr.node_features.shape[0] for gr in graphs), dtype=np.int64, count=g)
    ptr = np.zeros(g + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    f = graphs[0].node_features.shape[1] if g else len(FEATURE_NAMES)
    x = np.concatenate([gr.node_features for gr in graphs]) if g else np.zeros((0, f))
    x = np.ascontiguousarray(x, dtype=np.float32)
    batch_np = np.repeat(np.arange(g, dtype=np.int64), counts)
    e_counts = np.fromiter((gr.edge_index.shape[1] for gr in graphs), dtype=np.int64, count=g)
    if g and e_counts.sum():
        ei = np.concatenate([gr.edge_index for gr in graphs], axis=1).astype(np.int64, copy=False)
        if ei.min() < 0 or (ei >= np.repeat(counts, e_counts)).any():
            raise ValueError("edge_index refers to a node outside its graph")
        ei = ei + np.repeat(ptr[:-1], e_counts)
    else:
        ei = np.zeros((2, 0), dtype=np.int64)
    return x, ei, ptr, batch_np


def _dense_propagation(ei: np.ndarray, n: int) -> tuple[Tensor, np.ndarray]:
    """Dense D^-1/2 (A + I) D^-1/2 and the undirected off-diagonal edges (source, target) in
    row-major order, from batch-offset edges; duplicates and input self-loops collapse."""
    a = np.zeros((n, n), dtype=np.float32)
    a[ei[1], ei[0]] = 1.0
    a[ei[0], ei[1]] = 1.0
    np.fill_diagonal(a, 0.0)
    row, col = np.nonzero(a)
    np.fill_diagonal(a, 1.0)
    dinv = a.sum(axis=1) ** -0.5  # degree incl. the self-loop, >= 1
    a *= dinv[:, None]
    a *= dinv[None, :]
    return torch.from_numpy(a), np.stack((col, row))


def _sparse_propagation(ei: np.ndarray, n: int) -> tuple[Tensor, np.ndarray]:
    """:func:`_dense_propagation` as a sparse CSR matrix."""
    # One sort gives everything: keys row * n + col for both directions plus the diagonal
    # (self-loops), unique (duplicates and input self-loops collapse) and row-major (CSR).
    m = max(n, 1)
    keys = np.sort(np.concatenate((ei[1] * m + ei[0], ei[0] * m + ei[1], np.arange(n, dtype=np.int64) * (m + 1))))
    if len(keys) > 1:  # dedup by hand: np.unique's hash path is ~20x slower than sort here
        keep = np.empty(len(keys), dtype=bool)
        keep[0] = True
        np.not_equal(keys[1:], keys[:-1], out=keep[1:])
        keys = keys[keep]
    row, col = np.divmod(keys, m)
    nnz_per_row = np.bincount(row, minlength=n)  # = degree incl. the self-loop, >= 1
    dinv = nnz_per_row.astype(np.float32) ** -0.5
    crow = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(nnz_per_row, out=crow[1:])
    off_diag = row != col
    return _csr(crow, col, dinv[row] * dinv[col], n), np.stack((col[off_diag], row[off_diag]))


_CSR_WARNED = False


def _csr(crow: np.ndarray, col: np.ndarray, values: np.ndarray, n: int) -> Tensor:
    """Sparse CSR [n, n]; indices are valid by construction, so invariant checks are off.
    Indices are int32 when they fit: torch's CPU ``sparse.mm`` then takes its MKL path (measured:
    0.3 ms instead of 2.6 ms for 12k nodes x 64 features, one thread; same result and gradient).
    The first call swallows torch's one-time "CSR support is in beta" warning."""
    global _CSR_WARNED
    index = np.int32 if len(col) < np.iinfo(np.int32).max else np.int64
    args = (torch.from_numpy(crow.astype(index, copy=False)), torch.from_numpy(col.astype(index, copy=False)),
            torch.from_numpy(values), (n, n))
    if _CSR_WARNED:
        return torch.sparse_csr_tensor(*args, check_invariants=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = torch.sparse_csr_tensor(*args, check_invariants=False)
    _CSR_WARNED = True
    return out


class DistributionPolicy(Protocol):
    """What the decision code needs from a policy (GNN or heuristic)."""

    version: str

    @property
    def num_kernels(self) -> int: ...

    def padded_distributions(
        self, batch: GraphBatch, masks: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def distributions(self, batch: GraphBatch, masks: Sequence[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]: ...


def split_padded(probs: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    """[G, A_max] -> list of per-graph 1-D arrays of length counts[g]."""
    return [probs[i, :c] for i, c in enumerate(counts.tolist())]


def _linear(layer: nn.Linear, x: Tensor) -> Tensor:
    """The layer's maths without its module call (no hook machinery): the fast path's way."""
    return F.linear(x, layer.weight, layer.bias)


def _call(layer: nn.Module, x: Tensor) -> Tensor:
    """The usual module call: the reference path's way."""
    return layer(x)


def _mlp(head: nn.Sequential, x: Tensor, apply: Callable[[nn.Module, Tensor], Tensor]) -> Tensor:
    """A ``Linear -> ReLU -> Linear`` head."""
    return apply(head[2], F.relu(apply(head[0], x)))


@functools.cache
def pyg_nn() -> ModuleType:
    """``torch_geometric.nn``, imported on first use rather than with this module: it (and the
    torch._dynamo it loads) adds ~2.5 s to every process, and workers serving the heuristic, hosts
    and the fleet never build a network (a worker's imports 6.3 s -> 4.1 s, measured). PyG's own
    import-time FutureWarning about ``torch.jit.script`` is kept out of the logs (the filters are
    touched only on the first call: ``catch_warnings`` is not thread-safe)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
        import torch_geometric.nn
    return torch_geometric.nn


class TamiyoPolicyGNN(nn.Module):
    """Node-encoder MLP -> residual GCN stack -> mean+max pooling -> heads.

    Heads: value (graph scalar), WAIT logit (graph scalar) and K kernel logits per node
    (from the node embedding plus its graph's pooled embedding). ``version`` identifies the
    weights in decision records; the caller sets it (e.g. the registry version).
    """

    def __init__(self, config: PolicyConfig | None = None):
        GCNConv = pyg_nn().GCNConv
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

    def _heads(self, h: Tensor, pooled: Tensor, batch: Tensor | None,
               apply: Callable[[nn.Module, Tensor], Tensor] = _linear) -> PolicyOutput:
        """Heads over node embeddings and pooled [G, 2H]; ``batch=None`` means one graph (G = 1).
        ``apply`` runs a layer: ``_linear`` (the fast path) or ``_call`` (the reference path)."""
        graph_term = apply(self.action_graph_in, pooled)
        node_hidden = F.relu(apply(self.action_node_in, h) + (graph_term if batch is None else graph_term[batch]))
        return PolicyOutput(
            node_logits=apply(self.action_out, node_hidden),
            wait_logits=_mlp(self.wait_head, pooled, apply).squeeze(-1),
            values=_mlp(self.value_head, pooled, apply).squeeze(-1),
        )

    def _encode(self, x: Tensor, dropout: bool, apply: Callable[[nn.Module, Tensor], Tensor] = _linear) -> Tensor:
        h = F.relu(apply(self.encoder_in, x))
        if dropout:
            h = F.dropout(h, p=self.config.dropout, training=True)
        return apply(self.encoder_out, h)

    def forward(self, x: Tensor, edge_index: Tensor, batch: Tensor, num_graphs: int) -> PolicyOutput:
        """Reference path, written the usual torch_geometric way (module calls, ``GCNConv``, global
        pooling). x [N_total, F], edge_index [2, E_total] (pass undirected edges, as :func:`collate`
        builds), batch [N_total] long -> PolicyOutput([N_total, K], [G], [G])."""
        pyg = pyg_nn()
        h = self._encode(x, self.training, _call)
        for conv in self.gnn_layers:
            h = h + F.relu(conv(h, edge_index))
            h = F.dropout(h, p=self.config.dropout, training=self.training)
        pooled = torch.cat(
            (pyg.global_mean_pool(h, batch, size=num_graphs), pyg.global_max_pool(h, batch, size=num_graphs)), dim=1
        )
        return self._heads(h, pooled, batch, _call)

    def forward_batch(self, gb: GraphBatch, dropout: bool | None = None) -> PolicyOutput:
        """Fast path over a collated batch; same maths and parameters as :meth:`forward`.
        ``dropout`` defaults to ``self.training``."""
        active = self.training if dropout is None else dropout
        g = gb.num_graphs
        h = self._encode(gb.x, active)
        propagate = torch.mm if gb.adj.layout == torch.strided else torch.sparse.mm
        for conv in self.gnn_layers:
            agg = propagate(gb.adj, F.linear(h, conv.lin.weight))  # fresh tensor: in-place ops are autograd-safe
            if conv.bias is not None:
                agg.add_(conv.bias)
            h = h + agg.relu_()
            if active:
                h = F.dropout(h, p=self.config.dropout, training=True)
        if g == 1:
            pooled = torch.cat((h.mean(0, keepdim=True), h.amax(0, keepdim=True)), dim=1)
            return self._heads(h, pooled, None)
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
        padding, each row sums to 1 —, num_actions int64 [G], values float64 [G])."""
        with torch.inference_mode():
            out = self.forward_batch(batch, dropout=False)
        lay = batch.layout(self.num_kernels)
        legal = lay.padded_mask_np(masks)
        g = batch.num_graphs
        flat = np.full(g * lay.a_max, -np.inf)
        flat[lay.wait_flat] = out.wait_logits.numpy()
        flat[lay.node_flat] = out.node_logits.numpy().reshape(-1)
        logits = np.where(legal, flat.reshape(g, lay.a_max), -np.inf)
        # WAIT is always legal, so every row has a finite maximum.
        probs = np.exp(logits - logits.max(axis=1, keepdims=True)) if g else logits
        probs /= probs.sum(axis=1, keepdims=True)
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
