"""Advantage-weighted regression (AWR; the policy-extraction step of IQL) for discrete actions
over model graphs.

One-step (contextual-bandit) view: the reward of a decision is already the horizon return of that
one decision (val-loss improvement over the next epochs minus parameter cost, see
``training.episodes``), so we regress on it directly instead of bootstrapping through next states:

1. Baseline: V(s) ~ E_mu[r | s], a TamiyoPolicyGNN's value head fitted to observed rewards
   (MSE; ``expectile > 0.5`` gives IQL's optimistic expectile instead of the mean).
2. Advantages A = r - V(s), frozen, scaled by their standard deviation so ``beta`` does not depend
   on the reward's units.
3. Policy: maximise sum_i w_i log pi(a_i|s_i), w_i = exp(min(A_i / beta, log max_weight)),
   weights normalised to mean 1 so the step size matches behaviour cloning.

The optimum of step 3 is pi(a|s) proportional to mu(a|s) exp(A(s,a) / beta): an improvement on the
logging policy that stays on its support, which is what off-policy evaluation can check. Small
``beta`` is greedier; large ``beta`` tends to behaviour cloning.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from training.dataset import TransitionDataset
from training.learners.common import (
    LearnerResult,
    Timer,
    epochs,
    new_network,
    predict_values,
    seed_everything,
    step,
    taken,
)


@dataclass
class AWRConfig:
    epochs: int = field(default=30, metadata={"help": "policy passes over the training transitions"})
    value_epochs: int = field(default=20, metadata={"help": "passes for the baseline V(s) before the policy"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate (baseline and policy)"})
    batch_size: int = field(default=64, metadata={"help": "graphs per mini-batch"})
    hidden_dim: int = field(default=64, metadata={"help": "GNN width"})
    num_gnn_layers: int = field(default=3, metadata={"help": "GCN layers"})
    dropout: float = field(default=0.0, metadata={"help": "dropout in the GNN while training"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})
    beta: float = field(default=0.5, metadata={
        "help": "temperature on standardised advantages: smaller is greedier, larger tends to BC"})
    max_weight: float = field(default=20.0, metadata={"help": "cap on exp(A / beta) before normalising"})
    expectile: float = field(default=0.5, metadata={
        "help": "baseline loss expectile: 0.5 = mean (MSE), >0.5 = IQL-style optimistic baseline"})
    value_coef: float = field(default=0.5, metadata={
        "help": "weight of the policy's own value-head MSE (the value_estimate in decision records)"})
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm (0: off)"})
    seed: int = field(default=0, metadata={"help": "seeds initialisation and shuffling"})


def expectile_loss(diff: torch.Tensor, tau: float) -> torch.Tensor:
    """mean |tau - 1(diff < 0)| * diff^2 (tau = 0.5 is half the MSE)."""
    weight = torch.where(diff < 0, 1.0 - tau, tau)
    return (weight * diff * diff).mean()


def advantage_weights(rewards: np.ndarray, values: np.ndarray, beta: float, max_weight: float) -> tuple[np.ndarray, float]:
    """(weights float64 [T] with mean 1, advantage scale). Clipping happens in log space so a
    large advantage cannot overflow."""
    adv = rewards - values
    scale = float(adv.std()) if len(adv) > 1 and adv.std() > 1e-8 else 1.0
    w = np.exp(np.minimum(adv / (beta * scale), np.log(max_weight)))
    return w / w.mean(), scale


def fit(data: TransitionDataset, cfg: AWRConfig, progress: bool = False) -> LearnerResult:
    """Baseline, advantages, weighted policy regression. History series: value/loss (per baseline
    epoch), policy/loss (weighted NLL), policy/nll, policy/entropy, policy/value_mse."""
    if cfg.beta <= 0 or cfg.max_weight <= 1 or not 0 < cfg.expectile < 1:
        raise ValueError("AWR needs beta > 0, max_weight > 1 and 0 < expectile < 1")
    rng = seed_everything(cfg.seed)
    history: dict[str, list[float]] = {"value/loss": []}
    with Timer() as timer:
        # 1. The baseline V(s) on the logged data.
        baseline = new_network(data, cfg.hidden_dim, cfg.num_gnn_layers, cfg.dropout)
        optimiser = torch.optim.AdamW(baseline.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        baseline.train()
        for _ in epochs(cfg.value_epochs, "awr baseline", progress):
            total, n = 0.0, 0
            for batch in data.batches(cfg.batch_size, rng):
                values = baseline.forward_batch(batch.graphs).values
                loss = expectile_loss(batch.rewards - values, cfg.expectile)
                step(optimiser, loss, baseline, cfg.grad_clip)
                total, n = total + loss.item() * len(batch), n + len(batch)
            history["value/loss"].append(total / max(n, 1))

        # 2. Frozen advantages of the logged actions.
        weights, scale = advantage_weights(data.rewards, predict_values(baseline, data), cfg.beta, cfg.max_weight)
        weights_t = torch.from_numpy(weights.astype(np.float32))

        # 3. The policy: advantage-weighted log-likelihood.
        policy = new_network(data, cfg.hidden_dim, cfg.num_gnn_layers, cfg.dropout)
        optimiser = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        series = ("policy/loss", "policy/nll", "policy/entropy", "policy/value_mse")
        history.update({k: [] for k in series})
        policy.train()
        for _ in epochs(cfg.epochs, "awr policy", progress):
            sums, n = np.zeros(len(series)), 0
            for batch in data.batches(cfg.batch_size, rng):
                out = policy.log_probs(batch.graphs, batch.masks)
                logp = taken(out.log_probs, batch)
                weighted = -(weights_t[torch.from_numpy(batch.rows)] * logp).mean()
                value_mse = F.mse_loss(out.values, batch.rewards)
                loss = weighted + cfg.value_coef * value_mse
                step(optimiser, loss, policy, cfg.grad_clip)
                sums += len(batch) * np.array([weighted.item(), -logp.mean().item(),
                                               out.entropy.mean().item(), value_mse.item()])
                n += len(batch)
            for key, value in zip(series, sums / max(n, 1)):
                history[key].append(float(value))
        policy.eval()
    stats = {"advantage_scale": scale, "weight_max": float(weights.max()),
             "weight_ess_fraction": float(weights.sum() ** 2 / (weights ** 2).sum() / max(len(weights), 1))}
    return LearnerResult(policy, history, timer.seconds, stats)
