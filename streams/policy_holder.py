"""The policy a worker serves right now; swapped atomically when a new champion is validated."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingPolicy:
    """A policy object with ``distributions(batch, masks)`` and the version string decisions carry."""

    model: Any
    version: str


class PolicyHolder:
    """Thread-safe holder: readers take one consistent (model, version) pair per batch."""

    def __init__(self, initial: ServingPolicy) -> None:
        self._serving = initial
        self._lock = threading.Lock()
        self.swaps = 0

    @property
    def serving(self) -> ServingPolicy:
        return self._serving

    def swap(self, new: ServingPolicy) -> ServingPolicy:
        with self._lock:
            old, self._serving = self._serving, new
            self.swaps += 1
        log.info("policy swapped: %s -> %s", old.version, new.version)
        return old


def initial_policy(kind: str, seed: int = 0) -> ServingPolicy:
    """The policy a worker starts with: ``untrained``, else the heuristic (also for ``champion``,
    until the registry's champion has been loaded and validated)."""
    if kind in ("heuristic", "champion"):
        from models.heuristic import ThresholdHeuristic

        heuristic = ThresholdHeuristic()
        return ServingPolicy(heuristic, heuristic.version)
    if kind == "untrained":
        import torch

        from models.policy import PolicyConfig, TamiyoPolicyGNN

        torch.manual_seed(seed)
        model = TamiyoPolicyGNN(PolicyConfig()).eval()
        version = f"untrained-seed{seed}"
        model.version = version
        return ServingPolicy(model, version)
    raise ValueError(f"TAMIYO_POLICY must be heuristic, untrained or champion, not {kind!r}")
