"""Behaviour cloning: maximise log pi(a|s) of the logged actions. The baseline every offline RL
learner has to beat: it reproduces the logging policy (gates and exploration included), good and
bad decisions alike, because it never looks at rewards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from training.dataset import TransitionDataset
from training.learners.common import LearnerResult, Timer, epochs, new_network, seed_everything, step, taken


@dataclass
class BCConfig:
    epochs: int = field(default=30, metadata={"help": "passes over the training transitions"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    batch_size: int = field(default=64, metadata={"help": "graphs per mini-batch"})
    hidden_dim: int = field(default=64, metadata={"help": "GNN width"})
    num_gnn_layers: int = field(default=3, metadata={"help": "GCN layers"})
    dropout: float = field(default=0.0, metadata={"help": "dropout in the GNN while training"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})
    value_coef: float = field(default=0.5, metadata={
        "help": "weight of the value head's MSE to the observed reward (the value_estimate in decision records)"})
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm (0: off)"})
    seed: int = field(default=0, metadata={"help": "seeds initialisation and shuffling"})


def fit(data: TransitionDataset, cfg: BCConfig, progress: bool = False) -> LearnerResult:
    """Train a fresh TamiyoPolicyGNN on ``data``; history series: policy/loss, policy/nll,
    policy/accuracy (argmax == logged action), policy/entropy, policy/value_mse."""
    rng = seed_everything(cfg.seed)
    policy = new_network(data, cfg.hidden_dim, cfg.num_gnn_layers, cfg.dropout)
    optimiser = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history: dict[str, list[float]] = {k: [] for k in ("policy/loss", "policy/nll", "policy/accuracy",
                                                        "policy/entropy", "policy/value_mse")}
    with Timer() as timer:
        policy.train()
        for _ in epochs(cfg.epochs, "bc", progress):
            sums, n = np.zeros(5), 0
            for batch in data.batches(cfg.batch_size, rng):
                out = policy.log_probs(batch.graphs, batch.masks)
                nll = -taken(out.log_probs, batch).mean()
                value_mse = F.mse_loss(out.values, batch.rewards)
                loss = nll + cfg.value_coef * value_mse
                step(optimiser, loss, policy, cfg.grad_clip)
                hit = (out.log_probs.argmax(dim=1) == batch.actions).float().mean()
                sums += len(batch) * np.array([loss.item(), nll.item(), hit.item(),
                                               out.entropy.mean().item(), value_mse.item()])
                n += len(batch)
            for key, value in zip(history, sums / max(n, 1)):
                history[key].append(float(value))
        policy.eval()
    return LearnerResult(policy, history, timer.seconds)
