"""Safety gates and sampling: from a policy's action distribution to a logged Decision.

Order of operations per graph (``decide_batch``):

1. Legal mask: WAIT always; GERMINATE(layer, *) only for layers with a dormant seed that
   are not in cooldown; only WAIT once ``max_adaptations_per_epoch`` is reached ("cap").
   The policy's softmax is taken over legal actions only.
2. Confidence gate: if the total GERMINATE mass (1 - p_wait) is below
   ``confidence_threshold`` all of it moves to WAIT ("confidence").
3. Epsilon exploration: mix with the uniform distribution over legal actions. This can
   re-open actions the confidence gate closed (never illegal ones). ``epsilon=0`` serves the
   policy as it is, but off-policy evaluation cannot score actions logged with probability 0
   (``training.evaluation``). Every action with non-zero final probability stays legal.
4. Sample from the final distribution; the propensity is exactly ``final[index]``, which
   is what off-policy learning needs logged (WAIT included).

Everything is numpy over padded [G, A_max] matrices, so a batch costs a few array ops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from models.actions import DEFAULT_KERNELS, decode, legal_mask
from models.graph import ModelGraph
from models.policy import DistributionPolicy, collate


@dataclass
class GateConfig:
    """Safety gate settings. ``epsilon`` is the exploration rate (0: none, and no data to evaluate other policies)."""

    confidence_threshold: float = 0.5
    cooldown_epochs: int = 2
    max_adaptations_per_epoch: int = 1
    epsilon: float = 0.1


@dataclass
class GateState:
    """Per-model gate memory: last GERMINATE epoch per layer, adaptations so far this epoch."""

    last_adapted_epoch: dict[str, int] = field(default_factory=dict)
    adaptations_this_epoch: int = 0


@dataclass
class Decision:
    """One policy evaluation. ``distribution`` is float64 [1 + N * K] after all gates;
    ``propensity == distribution[action_index]``. ``gate`` is '+'-joined names of the gates
    that shaped the distribution ('cap', 'cooldown', 'confidence') or 'none'."""

    action_index: int
    layer_name: str | None
    seed_index: int | None
    kernel: str | None
    propensity: float
    distribution: np.ndarray
    gate: str
    value: float

    @property
    def action(self) -> str:
        """'WAIT' or 'GERMINATE' (the DecisionRecord ActionType symbol)."""
        return "WAIT" if self.action_index == 0 else "GERMINATE"


def blocked_layers(last_adapted_epoch: Mapping[str, int], epoch: int, cooldown_epochs: int) -> set[str]:
    """Layers adapted fewer than ``cooldown_epochs`` epochs ago (adapted at e: blocked for
    epochs e .. e + cooldown - 1). A last epoch in the future also blocks."""
    return {name for name, e in last_adapted_epoch.items() if epoch - int(e) < cooldown_epochs}


def cap_reached(adaptations_this_epoch: int, cfg: GateConfig) -> bool:
    """True when the per-epoch adaptation cap allows only WAIT."""
    return adaptations_this_epoch >= cfg.max_adaptations_per_epoch


def gate_batch(probs: np.ndarray, legal: np.ndarray, cfg: GateConfig) -> tuple[np.ndarray, np.ndarray]:
    """Confidence gate then epsilon mixing, row-wise.

    probs float [G, A], legal bool [G, A] (column 0 = WAIT must be legal; padding False).
    Returns (final float64 [G, A]: rows sum to 1, exactly 0 where not legal;
    confidence_gated bool [G]: the gate moved non-zero GERMINATE mass to WAIT).
    """
    legal = np.asarray(legal, dtype=bool)
    if legal.size and not legal[:, 0].all():
        raise ValueError("WAIT must always be legal")
    p = np.where(legal, np.nan_to_num(np.asarray(probs, dtype=np.float64), nan=0.0), 0.0)
    p = np.clip(p, 0.0, None)
    total = p.sum(axis=1)
    dead = total <= 0.0  # defensive: a row with no legal mass becomes WAIT
    p[dead, 0], total[dead] = 1.0, 1.0
    p /= total[:, None]
    adapt = p[:, 1:].sum(axis=1)
    closed = adapt < cfg.confidence_threshold
    p[closed, 1:] = 0.0
    p[closed, 0] = 1.0
    gated = closed & (adapt > 0.0)
    if cfg.epsilon > 0.0:
        uniform = legal / legal.sum(axis=1, keepdims=True)
        p = (1.0 - cfg.epsilon) * p + cfg.epsilon * uniform
        p /= p.sum(axis=1, keepdims=True)
    return p, gated


def gate_distribution(probs: np.ndarray, legal: np.ndarray, cfg: GateConfig) -> tuple[np.ndarray, str]:
    """One graph: probs [A], legal bool [A] -> (final float64 [A], 'confidence' or 'none')."""
    final, gated = gate_batch(np.asarray(probs)[None, :], np.asarray(legal)[None, :], cfg)
    return final[0], "confidence" if gated[0] else "none"


def sample_batch(final: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Inverse-CDF sample per row of final [G, A] -> (index int64 [G], propensity float64 [G]).

    Zero-probability entries (illegal actions, padding) can never be drawn.
    """
    final = np.asarray(final, dtype=np.float64)
    g = final.shape[0]
    if g == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    cdf = np.cumsum(final, axis=1)
    u = rng.random(g) * cdf[:, -1]
    index = (cdf <= u[:, None]).sum(axis=1)
    last_positive = final.shape[1] - 1 - np.argmax(final[:, ::-1] > 0, axis=1)
    index = np.minimum(index, last_positive)  # guards u rounding up to the row total
    return index, final[np.arange(g), index]


def sample(final_probs: np.ndarray, rng: np.random.Generator) -> tuple[int, float]:
    """One draw from final_probs [A] -> (index, propensity == final_probs[index])."""
    index, propensity = sample_batch(np.asarray(final_probs)[None, :], rng)
    return int(index[0]), float(propensity[0])


def _gate_state(state: GateState | Mapping) -> GateState:
    if isinstance(state, GateState):
        return state
    return GateState(
        last_adapted_epoch=dict(state.get("last_adapted_epoch") or {}),
        adaptations_this_epoch=int(state.get("adaptations_this_epoch") or 0),
    )


def decide_batch(
    graphs: Sequence[ModelGraph],
    policy: DistributionPolicy,
    gate_states: Sequence[GateState | Mapping],
    cfg: GateConfig,
    rng: np.random.Generator,
    kernels: Sequence[str] = DEFAULT_KERNELS,
) -> list[Decision]:
    """collate -> masked policy distributions -> gates -> sample, for a batch of graphs.

    ``gate_states[g]`` is a GateState or a mapping with ``last_adapted_epoch`` and
    ``adaptations_this_epoch`` for graph g; cooldown uses ``graphs[g].epoch``. Returns one
    Decision per graph, in order. Updating the gate state after a GERMINATE is the caller's job.
    """
    if len(gate_states) != len(graphs):
        raise ValueError(f"{len(gate_states)} gate states for {len(graphs)} graphs")
    k = len(kernels)
    if k != policy.num_kernels:
        raise ValueError(f"policy has {policy.num_kernels} kernels, catalog has {k}: {list(kernels)}")
    if not graphs:
        return []

    masks: list[np.ndarray] = []
    shaped: list[list[str]] = []
    for graph, raw in zip(graphs, gate_states):
        state = _gate_state(raw)
        blocked = blocked_layers(state.last_adapted_epoch, graph.epoch, cfg.cooldown_epochs)
        mask = legal_mask(graph, k, blocked)
        names: list[str] = []
        if cap_reached(state.adaptations_this_epoch, cfg):
            if mask[1:].any():
                names.append("cap")
            mask = np.zeros_like(mask)
            mask[0] = True
        elif blocked and any(
            d is not None and n in blocked for n, d in zip(graph.layer_names, graph.dormant_seed)
        ):
            names.append("cooldown")
        masks.append(mask)
        shaped.append(names)

    gb = collate(graphs)
    probs, counts, values = policy.padded_distributions(gb, masks)
    legal = gb.layout(k).padded_mask(masks).numpy()
    final, gated = gate_batch(probs, legal, cfg)
    index, propensity = sample_batch(final, rng)

    decisions: list[Decision] = []
    for g, graph in enumerate(graphs):
        names = shaped[g] + (["confidence"] if gated[g] else [])
        act = decode(int(index[g]), k)
        layer, kernel = (None, None) if act is None else act
        decisions.append(
            Decision(
                action_index=int(index[g]),
                layer_name=None if layer is None else graph.layer_names[layer],
                seed_index=None if layer is None else graph.dormant_seed[layer],
                kernel=None if kernel is None else kernels[kernel],
                propensity=float(propensity[g]),
                distribution=final[g, : counts[g]].copy(),
                gate="+".join(names) or "none",
                value=float(values[g]),
            )
        )
    return decisions
