"""Hold messages that arrived before their model's topology, for a bounded time and count.

Topology, health and outcomes are separate topics, so with a backlog (start-up, recovery) a
worker may read a model's first signals or epoch outcome before its topology. Such messages wait
here; when the topology arrives they are processed, and when they expire they are dead-lettered
(signals) or counted as undecided (outcomes).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Generic, TypeVar

T = TypeVar("T")


class Parking(Generic[T]):
    def __init__(self, ttl_s: float, capacity: int) -> None:
        self.ttl_s = ttl_s
        self.capacity = capacity
        self._by_model: OrderedDict[str, list[tuple[float, T]]] = OrderedDict()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._by_model

    def park(self, model_id: str, item: T, now: float | None = None, deadline: float | None = None) -> bool:
        """Keep ``item`` until its model's topology arrives; False when parking is full."""
        if self._count >= self.capacity:
            return False
        if deadline is None:
            deadline = (time.monotonic() if now is None else now) + self.ttl_s
        self._by_model.setdefault(model_id, []).append((deadline, item))
        self._count += 1
        return True

    def models(self) -> list[str]:
        return list(self._by_model)

    def release(self, model_id: str) -> list[tuple[float, T]]:
        """Everything parked for ``model_id`` as (deadline, item), in arrival order."""
        items = self._by_model.pop(model_id, [])
        self._count -= len(items)
        return items

    def expired(self, now: float | None = None) -> list[T]:
        """Remove and return every item whose deadline has passed."""
        now = time.monotonic() if now is None else now
        out: list[T] = []
        for model_id in list(self._by_model):
            items = self._by_model[model_id]
            keep = [(d, item) for d, item in items if d > now]
            out.extend(item for d, item in items if d <= now)
            if keep:
                self._by_model[model_id] = keep
            else:
                del self._by_model[model_id]
        self._count -= len(out)
        return out
