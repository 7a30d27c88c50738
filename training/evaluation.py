"""Off-policy evaluation of a policy on held-out transitions (IPS, SNIPS, DR with a fitted Q).

Challenger and champion are scored by the same code on the same rows. With no champion the
baseline is the behaviour policy itself: pi = the logged distribution, so every importance weight
is 1 and the estimates are the observed mean reward.

``serving_gate`` (a ``models.decide.GateConfig``) scores what workers would actually serve: the
policy's distribution after the confidence gate and epsilon exploration, not the raw softmax.

Each report also gives the policy's probability mass outside the behaviour's support (actions
legal when the decision was made but logged with probability 0: data collected without
exploration): the data says nothing about those actions, and the gate refuses a challenger that
relies on them.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence

import numpy as np

from models.decide import GateConfig as ServingGate
from models.decide import gate_batch
from models.policy import GraphBatch
from training.dataset import TransitionDataset
from training.ope import OPEReport, evaluate
from training.qfit import FittedQ


class PolicyLike(Protocol):
    def distributions(self, batch: GraphBatch, masks: Sequence[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]: ...


def _pad(rows: Sequence[np.ndarray]) -> np.ndarray:
    out = np.zeros((len(rows), max((len(r) for r in rows), default=1)))
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def action_probabilities(
    policy: PolicyLike | None,
    data: TransitionDataset,
    serving_gate: ServingGate | None = None,
    batch_size: int = 1024,
) -> list[np.ndarray]:
    """pi(·|s_i) per row (float64 [1 + N_i * K]). ``policy=None``: the logged behaviour."""
    if policy is None:
        return [b.copy() for b in data.behaviour]
    train_mode = getattr(policy, "training", None)
    if train_mode is not None:
        policy.eval()  # type: ignore[attr-defined]  # no dropout while scoring
    out: list[np.ndarray] = []
    try:
        for batch in data.batches(batch_size):
            probs, _ = policy.distributions(batch.graphs, batch.masks)
            if serving_gate is not None:
                legal = _pad([m.astype(float) for m in batch.masks]) > 0
                final, _ = gate_batch(_pad(probs), legal, serving_gate)
                probs = [final[i, : len(p)] for i, p in enumerate(probs)]
            out.extend(np.asarray(p, dtype=np.float64) for p in probs)
    finally:
        if train_mode:
            policy.train()  # type: ignore[attr-defined]
    return out


def ope_of(
    policy_like: PolicyLike | None,
    heldout: TransitionDataset,
    q_model: FittedQ | None,
    *,
    serving_gate: ServingGate | None = None,
    bootstrap: int = 500,
    confidence: float = 0.95,
    seed: int = 0,
) -> OPEReport:
    """IPS/SNIPS (and DR when ``q_model`` is given) of ``policy_like`` on ``heldout``.

    ``policy_like``: anything with ``distributions(batch, masks)`` (TamiyoPolicyGNN,
    ThresholdHeuristic), or None for the behaviour policy (weights 1; the serving gate is not
    applied again, the logged distribution already passed it).
    """
    if len(heldout) == 0:
        raise ValueError("no held-out transitions to evaluate on")
    pi = action_probabilities(policy_like, heldout, None if policy_like is None else serving_gate)
    pi_taken = np.array([p[a] for p, a in zip(pi, heldout.actions.tolist())])
    q = v = None
    if q_model is not None:
        q_rows = q_model.q_values(heldout)
        q, v = q_model.q_taken(heldout, q_rows), q_model.v_pi(heldout, pi, q_rows)
    report = evaluate(heldout.rewards, pi_taken, heldout.propensities, q=q, v=v,
                      bootstrap=bootstrap, confidence=confidence, seed=seed)
    return dataclasses.replace(report, unsupported_mass=unsupported_mass(pi, heldout.behaviour))


def unsupported_mass(pi: Sequence[np.ndarray], behaviour: Sequence[np.ndarray]) -> float:
    """Mean over rows of pi's probability on actions the logged behaviour gave probability 0."""
    if not len(pi):
        return 0.0
    return float(np.mean([float(p[b <= 0.0].sum()) for p, b in zip(pi, behaviour)]))
