"""The worker's garbage-collector pauses: measured, and kept short.

A worker holds a large, long-lived heap (torch, Faust, the policy network) that never becomes
garbage, yet every full collection walks all of it while the event loop stands still: a pause in
every decision made at that moment. ``freeze_startup_heap`` moves what exists after start-up into
the permanent generation (``gc.freeze``), so later collections only walk what the worker allocated
since. ``GcPauses`` times every collection (``gc.callbacks``) for the log and the metrics.
"""

from __future__ import annotations

import gc
import time


class GcPauses:
    """Longest pause and count per generation since the last ``take()``."""

    def __init__(self) -> None:
        self._started = 0.0
        self.longest_ms = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self.total_ms = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = int(info.get("generation", 0))
        pause_ms = (time.perf_counter() - self._started) * 1000.0
        self.count[generation] += 1
        self.total_ms += pause_ms
        if pause_ms > self.longest_ms[generation]:
            self.longest_ms[generation] = pause_ms

    def install(self) -> "GcPauses":
        if self not in gc.callbacks:
            gc.callbacks.append(self)
        return self

    def uninstall(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)

    def take(self) -> dict[str, float]:
        """The figures since the last call (then reset): for the periodic log line."""
        out = {"gc_collections": sum(self.count), "gc_total_ms": round(self.total_ms, 1),
               **{f"gc_longest_gen{g}_ms": round(self.longest_ms[g], 1) for g in range(3)}}
        self.longest_ms = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self.total_ms = 0.0
        return out


def freeze_startup_heap() -> int:
    """Collect once, then exempt every surviving object from later collections; returns how many."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
