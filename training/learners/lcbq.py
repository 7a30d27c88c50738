"""Pessimistic fitted-Q policy extraction ("lcbq"): act only where an ensemble of Q-functions
agrees that acting beats waiting.

Why not just take argmax Q: a controller WAITs most of the time, and on a healthy model every
GERMINATE is a (small) loss. Argmax over ~40 noisy Q estimates picks whichever healthy action
is most over-estimated, so a plain Q-greedy policy keeps adapting healthy layers (on the simulated
fleet 4-10 times a run, each adding 0.08 to the loss floor) and ties the threshold heuristic
despite curing more deficits. Steps:

1. ``members`` Q-networks (``training.qfit``, dueling, epoch baseline), each on an episode
   bootstrap of the training data with its own initialisation.
2. Per logged state, the lower confidence bound of every action's advantage over WAIT:
   LCB(s, a) = mean_m [Q_m(s, a) - Q_m(s, WAIT)] - kappa * sd_m [...]; LCB(s, WAIT) = 0. Actions
   the data say little about (the ensemble disagrees) need a larger estimated gain to be taken.
3. Distil into one TamiyoPolicyGNN: its logits' differences to the WAIT logit are regressed on
   the LCB over all legal actions (dense, noise-free targets), then the output layers are divided
   by ``temperature``, so the served policy is softmax(LCB / temperature) (near-greedy). The value
   head is fitted to the observed rewards (the behaviour's expected reward, like BC/AWR).

The ensemble mean (plus the epoch baseline) is returned as ``LearnerResult.q_model`` so the job's
doubly-robust estimate uses the same critic instead of fitting another one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from training.dataset import TransitionDataset
from training.learners.common import LearnerResult, Timer, epochs, new_network, seed_everything, step


@dataclass
class LCBQConfig:
    epochs: int = field(default=30, metadata={"help": "passes over the training transitions, per Q member"})
    distill_epochs: int = field(default=30, metadata={"help": "passes to distil the LCB policy into one network"})
    members: int = field(default=4, metadata={"help": "Q-networks in the bootstrap ensemble"})
    kappa: float = field(default=1.0, metadata={"help": "LCB = mean - kappa * sd of the members' advantages"})
    temperature: float = field(default=0.005, metadata={
        "help": "policy = softmax(LCB / temperature), in reward units (smaller is greedier)"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate (Q members and the policy)"})
    batch_size: int = field(default=64, metadata={"help": "graphs per mini-batch"})
    hidden_dim: int = field(default=64, metadata={"help": "GNN width"})
    num_gnn_layers: int = field(default=0, metadata={
        "help": "GCN layers (0: each node sees itself and the pooled graph; a layer's cure depends on that layer)"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})
    epoch_baseline: bool = field(default=True, metadata={"help": "Q regresses r - b(epoch) (see training.qfit)"})
    bootstrap: bool = field(default=True, metadata={"help": "each member sees an episode bootstrap of the data"})
    value_coef: float = field(default=0.5, metadata={
        "help": "weight of the policy's value-head MSE to the observed reward (the value_estimate in records)"})
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm (0: off)"})
    seed: int = field(default=0, metadata={"help": "seeds the bootstrap, initialisations and shuffling"})


def episode_bootstrap(episodes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-row weights float64 [T]: how often the row's episode was drawn when resampling whole
    episodes with replacement (rows of one run stay together, as in the held-out split)."""
    present, index = np.unique(episodes, return_inverse=True)
    counts = np.bincount(rng.integers(0, len(present), size=len(present)), minlength=len(present))
    return counts[index].astype(np.float64)


def lcb_advantages(member_q: list[np.ndarray], kappa: float) -> list[np.ndarray]:
    """Per row: mean - kappa * sd (over members, ddof=1) of Q_m(s, a) - Q_m(s, WAIT); 0 at WAIT.
    With one member the sd is taken as 0."""
    out = []
    for q in member_q:  # [M, A]
        adv = q - q[:, :1]
        sd = adv.std(axis=0, ddof=1) if len(adv) > 1 else np.zeros(adv.shape[1])
        out.append(adv.mean(axis=0) - kappa * sd)
    return out


def _padded(rows: list[np.ndarray], batch_rows: np.ndarray, concat_flat: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    flat = np.zeros(shape[0] * shape[1], dtype=np.float32)
    flat[concat_flat] = np.concatenate([rows[i] for i in batch_rows.tolist()])
    return torch.from_numpy(flat.reshape(shape))


def fit(data: TransitionDataset, cfg: LCBQConfig, progress: bool = False) -> LearnerResult:
    """Ensemble, LCB advantages, distillation. History series: q/mse (mean over members, per epoch),
    distill/mse (advantage regression), distill/value_mse, policy/entropy (of the served softmax)."""
    # Imported here: training.qfit imports training.learners.common, so a module-level import
    # would be circular when training.qfit is imported first.
    from training.qfit import EpochBaseline, FittedQ, QConfig, action_values, fit_q_network, row_epochs

    if cfg.members < 1 or cfg.temperature <= 0 or cfg.kappa < 0:
        raise ValueError("lcbq needs members >= 1, temperature > 0 and kappa >= 0")
    rng = seed_everything(cfg.seed)
    history: dict[str, list[float]] = {}
    with Timer() as timer:
        # 1. The bootstrap ensemble of critics.
        baseline = EpochBaseline(row_epochs(data), data.rewards) if cfg.epoch_baseline else None
        targets = data.rewards - (baseline.of(data) if baseline is not None else 0.0)
        nets, curves = [], []
        for m in range(cfg.members):
            qcfg = QConfig(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, hidden_dim=cfg.hidden_dim,
                           num_gnn_layers=cfg.num_gnn_layers, weight_decay=cfg.weight_decay,
                           grad_clip=cfg.grad_clip, seed=cfg.seed * 1000 + m, dueling=True)
            weights = episode_bootstrap(data.episodes, rng) if cfg.bootstrap else None
            net, mse = fit_q_network(data, qcfg, targets, weights, progress, desc=f"lcbq critic {m + 1}/{cfg.members}")
            nets.append(net)
            curves.append(mse)
        history["q/mse"] = np.mean(curves, axis=0).tolist()
        q_model = FittedQ(nets, dueling=True, baseline=baseline)

        # 2. Lower confidence bounds of the advantages over WAIT, on every logged state.
        member_q = q_model.member_q_values(data)
        lcb = [row.astype(np.float32) for row in lcb_advantages(member_q, cfg.kappa)]
        spread = 0.0  # how much the members disagree about GERMINATE advantages, on average
        if cfg.members > 1 and len(data):
            spread = float(np.mean(np.concatenate([(q[:, 1:] - q[:, :1]).std(axis=0, ddof=1)[mask[1:]]
                                                   for q, mask in zip(member_q, data.masks)])))

        # 3. Distil softmax(LCB / temperature) into one policy network.
        seed_everything(cfg.seed + 1)
        policy = new_network(data, cfg.hidden_dim, cfg.num_gnn_layers, dropout=0.0)
        optimiser = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        series = ("distill/mse", "distill/value_mse")
        history.update({k: [] for k in series})
        policy.train()
        for _ in epochs(cfg.distill_epochs, "lcbq distil", progress):
            sums, n = np.zeros(2), 0
            for batch in data.batches(cfg.batch_size, rng):
                lay = batch.graphs.layout(policy.num_kernels)
                out = policy.forward_batch(batch.graphs)
                q = action_values(out, batch.graphs, policy.num_kernels)
                adv = q - q[:, :1]
                target = _padded(lcb, batch.rows, lay.concat_flat, tuple(adv.shape))
                legal = lay.padded_mask(batch.masks)
                legal[:, 0] = False  # the WAIT column is 0 by construction
                err = torch.where(legal, adv - target, 0.0)
                mse = (err * err).sum() / legal.sum().clamp(min=1)
                value_mse = torch.mean((out.values - batch.rewards) ** 2)
                step(optimiser, mse + cfg.value_coef * value_mse, policy, cfg.grad_clip)
                sums += len(batch) * np.array([mse.item(), value_mse.item()])
                n += len(batch)
            for key, value in zip(series, sums / max(n, 1)):
                history[key].append(float(value))
        with torch.no_grad():  # logits / temperature: only the action heads' last layers feed the logits
            for layer in (policy.action_out, policy.wait_head[-1]):
                layer.weight.div_(cfg.temperature)
                layer.bias.div_(cfg.temperature)
        policy.eval()

    served_act, entropy = _served_stats(policy, data)
    history["policy/entropy"] = [entropy]
    greedy_act = float(np.mean([np.argmax(np.where(m, row, -np.inf)) != 0 for row, m in zip(lcb, data.masks)]))
    stats = {"lcb/greedy_act_fraction": greedy_act, "lcb/served_act_mass": served_act,
             "lcb/member_advantage_sd": spread}
    return LearnerResult(policy, history, timer.seconds, stats, q_model=q_model)


def _served_stats(policy, data: TransitionDataset) -> tuple[float, float]:
    """(mean probability of acting, mean entropy) of the distilled policy on the training states."""
    act, entropy, n = 0.0, 0.0, 0
    with torch.inference_mode():
        for batch in data.batches(1024):
            out = policy.log_probs(batch.graphs, batch.masks)
            act += float((1.0 - out.log_probs[:, 0].exp()).sum())
            entropy += float(out.entropy.sum())
            n += len(batch)
    return act / max(n, 1), entropy / max(n, 1)
