"""The worker's pauses: garbage-collector pauses (measured, and kept short) and event-loop stalls.

A worker holds a large, long-lived heap (torch, Faust, the policy network) that never becomes
garbage, yet every full collection walks all of it while the event loop stands still: a pause in
every decision made at that moment. ``freeze_startup_heap`` moves what exists after start-up into
the permanent generation (``gc.freeze``), so later collections only walk what the worker allocated
since. ``GcPauses`` times every collection (``gc.callbacks``) and ``LoopStalls`` how late a short
sleep wakes up; both are in the worker's periodic counters log line.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import gc
import logging
import sys
import threading
import time
import traceback
from typing import Callable

log = logging.getLogger(__name__)


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


class LoopStalls:
    """How late a 10 ms sleep wakes up: the longest stretch the event loop was busy elsewhere
    (every decision due in that stretch waited for it)."""

    TICK_S = 0.01

    def __init__(self, report_over_ms: float = 0.0) -> None:
        self.longest_ms = 0.0
        self.over_20ms = 0
        self.at = 0.0
        self.beat = time.perf_counter()
        self.report_over_ms = report_over_ms  # > 0: a thread logs the loop's stack when stuck this long

    def record(self, late_ms: float) -> None:
        if late_ms > 20.0:
            self.over_20ms += 1
        if late_ms > self.longest_ms:
            self.longest_ms, self.at = late_ms, time.time()

    async def watch(self, should_stop: Callable[[], bool]) -> None:
        if self.report_over_ms > 0:
            _StallReporter(self, threading.get_ident(), self.report_over_ms / 1000.0).start()
        while not should_stop():
            started = self.beat = time.perf_counter()
            await asyncio.sleep(self.TICK_S)
            self.beat = time.perf_counter()
            self.record((self.beat - started - self.TICK_S) * 1000.0)
        self.report_over_ms = 0.0

    def take(self) -> dict[str, float]:
        out = {"loop_stall_longest_ms": round(self.longest_ms, 1), "loop_stalls_over_20ms": self.over_20ms,
               "loop_stall_at": round(self.at % 60, 2)}
        self.longest_ms, self.over_20ms, self.at = 0.0, 0, 0.0
        return out


class _StallReporter(threading.Thread):
    """Logs where the event loop is while it has not ticked for ``threshold_s`` (at most once per
    stall and once every 10 s): the long synchronous step, named by its stack."""

    def __init__(self, stalls: LoopStalls, loop_thread: int, threshold_s: float) -> None:
        super().__init__(daemon=True, name="stall-reporter")
        self.stalls, self.loop_thread, self.threshold_s = stalls, loop_thread, threshold_s
        self.last_report = 0.0

    def run(self) -> None:
        reported_beat = None
        while self.stalls.report_over_ms > 0:
            time.sleep(self.threshold_s / 2)
            beat = self.stalls.beat
            stuck = time.perf_counter() - beat
            if stuck < self.threshold_s or beat == reported_beat or time.monotonic() - self.last_report < 10:
                continue
            frame = sys._current_frames().get(self.loop_thread)
            if frame is None:
                return
            reported_beat, self.last_report = beat, time.monotonic()
            stack = "".join(traceback.format_stack(frame)[-14:])  # innermost frames
            log.warning("event loop stuck for %.0f ms in:\n%s", stuck * 1000, stack)


def freeze_startup_heap(collect: bool = True) -> int:
    """Exempt every live object from later collections (after one full collection unless
    ``collect`` is False: a running worker must not stop for it); returns how many are frozen."""
    if collect:
        gc.collect()
    freeze_heap()
    return gc.get_freeze_count()  # walks the frozen list (CPython 3.11): fine once at start-up


def freeze_heap() -> None:
    """``gc.freeze()``, undone at exit: the interpreter's last collection must still reach reference
    cycles that were live when frozen (native extensions such as triton's report them as leaked
    instances otherwise). Freezing is constant-time; counting the frozen objects is not (measured
    48 ms after a replay), so it does not count them."""
    _unfreeze_at_exit()
    gc.freeze()


@functools.cache
def _unfreeze_at_exit() -> None:
    atexit.register(gc.unfreeze)
