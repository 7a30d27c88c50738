"""A fitted Q(s, a) for doubly-robust off-policy evaluation.

The network is a TamiyoPolicyGNN whose action logits are read as Q-values (WAIT from the WAIT
head, GERMINATE(layer, kernel) from the node head), regressed on the observed reward of the taken
action only (MSE). Rewards are one-decision horizon returns (see ``training.learners.awr``), so
Q(s, a) = E[r | s, a] with no bootstrapping. Fit it on the training split: DR stays unbiased on
held-out data whatever Q is, and a better Q only narrows its interval.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from models.policy import GraphBatch, TamiyoPolicyGNN
from training.dataset import TransitionDataset
from training.learners.common import epochs, new_network, seed_everything, step


@dataclass
class QConfig:
    epochs: int = field(default=30, metadata={"help": "passes over the training transitions"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    batch_size: int = field(default=64, metadata={"help": "graphs per mini-batch"})
    hidden_dim: int = field(default=64, metadata={"help": "GNN width"})
    num_gnn_layers: int = field(default=3, metadata={"help": "GCN layers"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm (0: off)"})
    seed: int = field(default=0, metadata={"help": "seeds initialisation and shuffling"})


def q_matrix(net: TamiyoPolicyGNN, gb: GraphBatch) -> Tensor:
    """Q-values [G, A_max] in action-index order (padding columns are 0)."""
    out = net.forward_batch(gb)
    lay = gb.layout(net.num_kernels)
    g = gb.num_graphs
    flat = out.wait_logits.new_zeros(g * lay.a_max)
    flat = flat.index_put((torch.from_numpy(lay.wait_flat),), out.wait_logits)
    flat = flat.index_put((torch.from_numpy(lay.node_flat),), out.node_logits.reshape(-1))
    return flat.view(g, lay.a_max)


class FittedQ:
    """Q(s, ·) on dataset rows. Values on illegal actions are meaningless (never trained); every
    use weights them with a policy that gives them probability 0."""

    def __init__(self, net: TamiyoPolicyGNN):
        self.net = net.eval()

    def q_values(self, data: TransitionDataset, batch_size: int = 1024) -> list[np.ndarray]:
        """Per row, float64 [1 + N_i * K]."""
        out: list[np.ndarray] = []
        with torch.inference_mode():
            for batch in data.batches(batch_size):
                q = q_matrix(self.net, batch.graphs).double().numpy()
                counts = batch.graphs.layout(self.net.num_kernels).counts
                out.extend(q[i, :c].copy() for i, c in enumerate(counts.tolist()))
        return out

    def q_taken(self, data: TransitionDataset, q: list[np.ndarray] | None = None) -> np.ndarray:
        """Q(s_i, a_i) of the logged actions, float64 [T]."""
        q = q if q is not None else self.q_values(data)
        return np.array([row[a] for row, a in zip(q, data.actions.tolist())], dtype=np.float64)

    def v_pi(self, data: TransitionDataset, pi: list[np.ndarray], q: list[np.ndarray] | None = None) -> np.ndarray:
        """sum_a pi(a|s_i) Q(s_i, a) for a target policy's per-row distributions, float64 [T]."""
        q = q if q is not None else self.q_values(data)
        if len(pi) != len(q):
            raise ValueError(f"{len(pi)} distributions for {len(q)} rows")
        return np.array([float(np.dot(p, row)) for p, row in zip(pi, q)], dtype=np.float64)


def fit_q(data: TransitionDataset, cfg: QConfig, progress: bool = False) -> tuple[FittedQ, dict[str, list[float]]]:
    """Regress Q(s_i, a_i) on r_i; returns the model and {"q/mse": per-epoch training MSE}."""
    rng = seed_everything(cfg.seed)
    net = new_network(data, cfg.hidden_dim, cfg.num_gnn_layers, dropout=0.0)
    optimiser = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history: dict[str, list[float]] = {"q/mse": []}
    net.train()
    for _ in epochs(cfg.epochs, "fitted Q", progress):
        total, n = 0.0, 0
        for batch in data.batches(cfg.batch_size, rng):
            q = q_matrix(net, batch.graphs).gather(1, batch.actions[:, None]).squeeze(1)
            loss = torch.mean((q - batch.rewards) ** 2)
            step(optimiser, loss, net, cfg.grad_clip)
            total, n = total + loss.item() * len(batch), n + len(batch)
        history["q/mse"].append(total / max(n, 1))
    return FittedQ(net), history
