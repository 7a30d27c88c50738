"""Hold messages that arrived before their model's topology, for a bounded time and count.

Topology, health and outcomes are separate topics, so with a backlog (start-up, recovery) a
worker may read a model's first signals or epoch outcome before its topology. Such messages wait
here; when the topology arrives they are processed, and when they expire they are dead-lettered
(signals) or counted as undecided (outcomes).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable, Generic, TypeVar

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

    def release(self, model_id: str, when: Callable[[T], bool] | None = None) -> list[tuple[float, T]]:
        """What is parked for ``model_id`` (of it, what ``when`` accepts) as (deadline, item), in arrival
        order; taken out of parking, the rest stays."""
        if when is None:  # the common case: everything, without a test per item
            items = self._by_model.pop(model_id, [])
            self._count -= len(items)
            return items
        return self._take(model_id, lambda deadline, item: when(item))

    def restore(self, model_id: str, items: list[tuple[float, T]]) -> None:
        """Put (deadline, item) pairs taken out for work that failed back in front of the model's queue.

        Above capacity if need be: they had a place, and the caller holds their commits.
        """
        if items:
            self._by_model[model_id] = items + self._by_model.get(model_id, [])
            self._count += len(items)

    def expired(self, now: float | None = None) -> list[T]:
        """Remove and return every item whose deadline has passed."""
        now = time.monotonic() if now is None else now
        return [item for model_id in list(self._by_model)
                for _, item in self._take(model_id, lambda deadline, item: deadline <= now)]

    def remove(self, when: Callable[[T], bool]) -> list[T]:
        """Remove and return every item, of any model, that ``when`` accepts."""
        return [item for model_id in list(self._by_model) for _, item in self.release(model_id, when)]

    def _take(self, model_id: str, taken: Callable[[float, T], bool]) -> list[tuple[float, T]]:
        items = self._by_model.get(model_id, [])
        marks = [taken(deadline, item) for deadline, item in items]
        out = [entry for entry, mark in zip(items, marks) if mark]
        if out:
            keep = [entry for entry, mark in zip(items, marks) if not mark]
            if keep:
                self._by_model[model_id] = keep
            else:
                del self._by_model[model_id]
            self._count -= len(out)
        return out
