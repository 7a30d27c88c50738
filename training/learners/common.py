"""What every learner shares: seeding, building the network, the per-epoch loop, the result type."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from models.policy import PolicyConfig, TamiyoPolicyGNN
from training.dataset import Batch, TransitionDataset


@dataclass
class LearnerResult:
    """The trained policy (in eval mode) and one value per epoch for each logged series, e.g.
    ``{"policy/loss": [...], "policy/nll": [...]}``; series of different phases may differ in length.
    Every series is a mean over the epoch's mini-batches, weighted by batch size."""

    policy: TamiyoPolicyGNN
    history: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0
    stats: dict[str, float] = field(default_factory=dict)  # one-off numbers, e.g. advantage scale
    # A critic fitted on the same data (training.qfit.FittedQ), when the learner has one: the job
    # then uses it for the doubly-robust estimate instead of fitting another.
    q_model: Any = None


def seed_everything(seed: int) -> np.random.Generator:
    """Seed torch and python; return the numpy generator the learner shuffles with."""
    random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def new_network(data: TransitionDataset, hidden_dim: int, num_gnn_layers: int, dropout: float) -> TamiyoPolicyGNN:
    return TamiyoPolicyGNN(PolicyConfig(hidden_dim=hidden_dim, num_gnn_layers=num_gnn_layers,
                                        num_kernels=data.num_kernels, dropout=dropout))


def epochs(n: int, desc: str, progress: bool) -> Iterator[int]:
    """range(n) with a tqdm bar when ``progress``."""
    return iter(tqdm(range(n), desc=desc, unit="epoch", leave=False, disable=not progress))


def taken(log_probs: Tensor, batch: Batch) -> Tensor:
    """log pi(a_i|s_i) of the logged actions, [B], from padded log-probs [B, A_max]."""
    return log_probs.gather(1, batch.actions[:, None]).squeeze(1)


def step(optimiser: torch.optim.Optimizer, loss: Tensor, net: torch.nn.Module, grad_clip: float) -> None:
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    optimiser.step()


def predict_values(net: TamiyoPolicyGNN, data: TransitionDataset, batch_size: int = 1024) -> np.ndarray:
    """The value head on every row, float64 [T], in eval mode (no dropout)."""
    was_training = net.training
    net.eval()
    out = np.zeros(len(data))
    with torch.inference_mode():
        for batch in data.batches(batch_size):
            out[batch.rows] = net.forward_batch(batch.graphs).values.double().numpy()
    net.train(was_training)
    return out


class Timer:
    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
