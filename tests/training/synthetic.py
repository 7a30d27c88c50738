"""Shared by the learner tests: the true value of a policy on the synthetic world."""

from __future__ import annotations

import numpy as np

from training.dataset import TransitionDataset, synthetic_mean_rewards


def true_value(probs: list[np.ndarray], data: TransitionDataset) -> float:
    return float(np.mean([p @ r for p, r in zip(probs, synthetic_mean_rewards(data))]))
