"""A fitted Q(s, a): for doubly-robust off-policy evaluation, and the critic of the ``lcbq`` learner.

The network is a TamiyoPolicyGNN whose action logits are read as Q-values (WAIT from the WAIT
head, GERMINATE(layer, kernel) from the node head), regressed on the observed reward of the taken
action only (MSE). Rewards are one-decision horizon returns (see ``training.learners.awr``), so
Q(s, a) = E[r | s, a] with no bootstrapping. Fit it on the training split: DR stays unbiased on
held-out data whatever Q is, and a better Q only narrows its interval.

Two options make the regression much easier on real fleets (both off by default, the ``lcbq``
learner turns them on):

* ``dueling``: Q(s, a) = V(s) + A(s, a), with V from the value head, so the part of the reward
  every action of a state shares is learned once instead of separately by the WAIT head and by
  every node.
* ``epoch_baseline``: regress r - b(epoch) instead of r, where b(epoch) is the mean reward of the
  decisions taken at that epoch of their run (shrunk towards the overall mean) and is added back
  when Q is read. Most of a decision's reward is the run's own convergence (the loss falls fast
  early in a run whatever the controller does), which the graph features do not show; the epoch
  is known before the decision and the logging policy does not see it, so subtracting it changes
  no action's advantage and removes most of the noise (reward s.d. 0.25 -> 0.10 on the simulated
  fleet, horizon 3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from models.policy import GraphBatch, PolicyOutput, TamiyoPolicyGNN
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
    dueling: bool = field(default=False, metadata={"help": "Q = V(s) + A(s, a) (value head + action heads)"})
    epoch_baseline: bool = field(default=False, metadata={"help": "regress r - b(epoch), add b back when read"})


class EpochBaseline:
    """b(epoch): mean reward of the decisions at each run epoch, shrunk towards the overall mean by
    ``prior`` pseudo-decisions; epochs from ``cap`` on share one bin."""

    def __init__(self, epochs_: np.ndarray, rewards: np.ndarray, cap: int = 100, prior: float = 10.0):
        e = np.clip(np.asarray(epochs_, dtype=np.int64), 0, cap)
        r = np.asarray(rewards, dtype=np.float64)
        overall = float(r.mean()) if len(r) else 0.0
        sums = np.bincount(e, weights=r, minlength=cap + 1)
        counts = np.bincount(e, minlength=cap + 1)
        self.cap = cap
        mass = counts + prior
        self.table = np.divide(sums + prior * overall, mass, out=np.full(cap + 1, overall), where=mass > 0)

    def __call__(self, epochs_: np.ndarray) -> np.ndarray:
        return self.table[np.clip(np.asarray(epochs_, dtype=np.int64), 0, self.cap)]

    def of(self, data: TransitionDataset) -> np.ndarray:
        """b per dataset row, float64 [T]."""
        return self(row_epochs(data))


def row_epochs(data: TransitionDataset) -> np.ndarray:
    """The run epoch of each decision, int64 [T]."""
    return np.fromiter((g.epoch for g in data.graphs), dtype=np.int64, count=len(data))


def q_matrix(net: TamiyoPolicyGNN, gb: GraphBatch, dueling: bool = False) -> Tensor:
    """Q-values [G, A_max] in action-index order (padding columns hold V(s) when dueling, else 0)."""
    return action_values(net.forward_batch(gb), gb, net.num_kernels, dueling)


def action_values(out: PolicyOutput, gb: GraphBatch, num_kernels: int, dueling: bool = False) -> Tensor:
    """:func:`q_matrix` from an already computed forward pass."""
    lay = gb.layout(num_kernels)
    g = gb.num_graphs
    flat = out.wait_logits.new_zeros(g * lay.a_max)
    flat = flat.index_put((torch.from_numpy(lay.wait_flat),), out.wait_logits)
    flat = flat.index_put((torch.from_numpy(lay.node_flat),), out.node_logits.reshape(-1))
    q = flat.view(g, lay.a_max)
    return q + out.values[:, None] if dueling else q


class FittedQ:
    """Q(s, ·) on dataset rows: the mean of one or more networks, plus b(epoch) when fitted with
    the epoch baseline. Values on illegal actions are meaningless (never trained); every use
    weights them with a policy that gives them probability 0."""

    def __init__(self, net: TamiyoPolicyGNN | Sequence[TamiyoPolicyGNN], dueling: bool = False,
                 baseline: EpochBaseline | None = None):
        self.nets = [n.eval() for n in ([net] if isinstance(net, TamiyoPolicyGNN) else net)]
        if not self.nets:
            raise ValueError("FittedQ needs at least one network")
        self.dueling = dueling
        self.baseline = baseline

    @property
    def net(self) -> TamiyoPolicyGNN:
        return self.nets[0]

    def member_q_values(self, data: TransitionDataset, batch_size: int = 1024) -> list[np.ndarray]:
        """Per row, float64 [M, 1 + N_i * K]: every network's Q (without the epoch baseline)."""
        out: list[np.ndarray] = []
        with torch.inference_mode():
            for batch in data.batches(batch_size):
                q = torch.stack([q_matrix(n, batch.graphs, self.dueling) for n in self.nets]).double().numpy()
                counts = batch.graphs.layout(self.nets[0].num_kernels).counts
                out.extend(q[:, i, :c].copy() for i, c in enumerate(counts.tolist()))
        return out

    def q_values(self, data: TransitionDataset, batch_size: int = 1024) -> list[np.ndarray]:
        """Per row, float64 [1 + N_i * K]."""
        rows = [m.mean(axis=0) for m in self.member_q_values(data, batch_size)]
        if self.baseline is not None:
            for row, b in zip(rows, self.baseline.of(data).tolist()):
                row += b
        return rows

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


def fit_q_network(
    data: TransitionDataset,
    cfg: QConfig,
    targets: np.ndarray,
    weights: np.ndarray | None = None,
    progress: bool = False,
    desc: str = "fitted Q",
) -> tuple[TamiyoPolicyGNN, list[float]]:
    """One network regressing Q(s_i, a_i) on ``targets`` (float [T]), optionally weighted per row
    (e.g. bootstrap counts); returns it in eval mode and the per-epoch weighted training MSE."""
    rng = seed_everything(cfg.seed)
    net = new_network(data, cfg.hidden_dim, cfg.num_gnn_layers, dropout=0.0)
    optimiser = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    y = torch.from_numpy(np.asarray(targets, dtype=np.float32))
    w = None if weights is None else torch.from_numpy(np.asarray(weights, dtype=np.float32))
    mse: list[float] = []
    net.train()
    for _ in epochs(cfg.epochs, desc, progress):
        total, n = 0.0, 0.0
        for batch in data.batches(cfg.batch_size, rng):
            rows = torch.from_numpy(batch.rows)
            q = q_matrix(net, batch.graphs, cfg.dueling).gather(1, batch.actions[:, None]).squeeze(1)
            err = (q - y[rows]) ** 2
            if w is None:
                loss, mass = err.mean(), float(len(batch))
            else:
                wb = w[rows]
                mass = float(wb.sum())
                if mass <= 0.0:
                    continue
                loss = (wb * err).sum() / mass
            step(optimiser, loss, net, cfg.grad_clip)
            total, n = total + loss.item() * mass, n + mass
        mse.append(total / max(n, 1e-12))
    return net.eval(), mse


def fit_q(data: TransitionDataset, cfg: QConfig, progress: bool = False) -> tuple[FittedQ, dict[str, list[float]]]:
    """Regress Q(s_i, a_i) on r_i; returns the model and {"q/mse": per-epoch training MSE}."""
    baseline = EpochBaseline(row_epochs(data), data.rewards) if cfg.epoch_baseline else None
    targets = data.rewards - (baseline.of(data) if baseline is not None else 0.0)
    net, mse = fit_q_network(data, cfg, targets, progress=progress)
    return FittedQ(net, cfg.dueling, baseline), {"q/mse": mse}
