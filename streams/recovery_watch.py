"""Recovery watchdog: a table recovery that stops making progress is restarted, then the worker.

After a rebalance Faust reads a worker's tables back from their changelogs and keeps its agents
paused until that is done. Seen once in CI (faust-streaming 0.15; upstream reports of the same
symptom: faust-streaming/faust#21, #47, #74): a recovery that never receives a changelog event,
logging "No event received for active tp ..." every few seconds, so the worker decides nothing
from then on. The watchdog measures progress, not duration (a long recovery that moves is left
alone): when the changelog offsets read back have not moved for ``stall_s`` seconds, it logs what
the consumer looks like and asks the group coordinator for a rejoin, which restarts recovery on a
fresh assignment. After ``max_rejoins`` rejoins in a row without progress the process exits with
``EXIT_RECOVERY_STALLED`` for its supervisor to start it again: tables are rebuilt from the
changelogs and uncommitted input is read again, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from streams.faust_seek import existing_guard

log = logging.getLogger(__name__)

EXIT_RECOVERY_STALLED = 75  # EX_TEMPFAIL: try again
CHECK_INTERVAL_S = 5.0

OK, REJOIN, EXIT = "ok", "rejoin", "exit"


@dataclass
class RecoveryWatch:
    """Decides, from samples of Faust's recovery state, when a recovery has stalled."""

    stall_s: float
    max_rejoins: int = 2
    rejoins: int = 0  # rejoins since the last progress
    _mark: tuple[Any, int] | None = field(default=None, repr=False)  # (recovery start, offsets read)
    _since: float = 0.0

    def check(self, in_recovery: bool, started_at: Any, recovered: int, now: float) -> str:
        """``OK``, ``REJOIN`` (stalled: restart recovery) or ``EXIT`` (stalled after every rejoin).

        ``started_at`` identifies the recovery in progress, ``recovered`` sums the changelog
        offsets it has read so far."""
        if not in_recovery or self.stall_s <= 0:
            self._mark = None
            self.rejoins = 0
            return OK
        mark = (started_at, recovered)
        if mark != self._mark:
            if self._mark is not None and self._mark[0] == started_at:
                self.rejoins = 0  # the same recovery moved on
            self._mark, self._since = mark, now
            return OK
        if now - self._since < self.stall_s:
            return OK
        if self.rejoins >= self.max_rejoins:
            return EXIT
        self.rejoins += 1
        self._since = now
        return REJOIN


def sample(recovery: Any) -> tuple[bool, Any, int]:
    """(in recovery, when it started, changelog offsets read) from Faust's ``Recovery``."""
    offsets = getattr(recovery, "active_offsets", {}) or {}
    recovered = sum(int(v) for v in offsets.values() if v is not None)
    return bool(getattr(recovery, "in_recovery", False)), getattr(recovery, "_recovery_started_at", None), recovered


def describe(app: Any) -> str:
    """What the consumer looks like while recovery is stuck: for the log, not for decisions.
    Per partition left: offset read / high watermark / the consumer's fetch position."""
    recovery = app.tables.recovery
    consumer = app.consumer
    parts = []
    try:
        left = [tp for tp, n in recovery.active_remaining().items() if n > 0]
        parts.append("remaining={" + ", ".join(
            f"{tp.topic}/{tp.partition}: {recovery.active_offsets.get(tp)}/{recovery.active_highwaters.get(tp)}"
            f"/{_position(consumer, tp)}" for tp in left) + "}")
    except Exception as exc:  # the log line must not fail the watchdog
        parts.append(f"remaining=? ({exc!r})")
    parts.append(f"flow_active={getattr(consumer, 'flow_active', '?')}")
    guard = existing_guard(consumer)
    if guard is not None:
        parts.append(f"seek_guard(holding={guard.holding}, seeking={guard.seeking}, fetching={guard.fetching}, "
                     f"delivering={guard.delivering})")
    try:
        subscription = consumer._thread._consumer._subscription
        parts.append(f"paused={sorted(f'{tp.topic}/{tp.partition}' for tp in subscription.paused_partitions())}")
    except Exception:
        pass
    return " ".join(parts)


def _on_consumer_thread(consumer: Any, call: Callable[[Any], Awaitable[Any]], timeout: float) -> Any:
    """``await call(aiokafka consumer)`` on the loop of Faust's consumer thread, where aiokafka
    lives, from another thread; its result."""
    thread = consumer._thread
    return asyncio.run_coroutine_threadsafe(call(thread._ensure_consumer()), thread.thread_loop).result(timeout)


def _position(consumer: Any, tp: Any) -> Any:
    """The consumer's fetch position of ``tp``, or ``?``."""
    try:
        return _on_consumer_thread(consumer, lambda aio: aio.position(tp), 2.0)
    except Exception:
        return "?"


def request_rejoin(app: Any, timeout: float = 10.0) -> None:
    """Ask the group coordinator for a rejoin: a rebalance, then recovery again."""

    async def _rejoin(aio: Any) -> None:
        aio._coordinator.request_rejoin()

    _on_consumer_thread(app.consumer, _rejoin, timeout)


class RecoveryWatchdog(threading.Thread):
    """Samples the app's recovery every ``interval_s`` from a thread of its own: Faust starts an
    app's timers and tasks only once the first recovery is complete, and that one can hang too."""

    def __init__(self, app: Any, watch: RecoveryWatch, interval_s: float = CHECK_INTERVAL_S,
                 metrics: Any = None) -> None:
        super().__init__(name="tamiyo-recovery-watch", daemon=True)
        self.app, self.watch, self.interval_s, self.metrics = app, watch, interval_s, metrics
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            try:
                self.tick(time.monotonic())
            except Exception:  # Faust's state changes under our feet: a torn read, try again next time
                log.debug("recovery watch: sample failed", exc_info=True)

    def tick(self, now: float) -> str:
        watch = self.watch
        verdict = watch.check(*sample(self.app.tables.recovery), now=now)
        if verdict == OK:
            return verdict
        state = describe(self.app)
        if verdict == REJOIN:
            log.error("table recovery made no progress for %.0f s; rejoining the group to restart it "
                      "(rejoin %d of %d): %s", watch.stall_s, watch.rejoins, watch.max_rejoins, state)
            if self.metrics is not None:
                self.metrics.recovery_rejoins.inc()
            try:
                request_rejoin(self.app)
            except Exception:
                log.exception("rejoin request failed")
            return verdict
        log.critical("table recovery made no progress after %d rejoins; exiting with %d for the supervisor to "
                     "restart the worker: %s", watch.max_rejoins, EXIT_RECOVERY_STALLED, state)
        logging.shutdown()
        sys.stdout.flush()
        os._exit(EXIT_RECOVERY_STALLED)


def start(app: Any, stall_s: float, max_rejoins: int = 2, metrics: Any = None) -> RecoveryWatchdog | None:
    """Watch the app's table recovery (``stall_s`` <= 0: not at all); rejoins are counted in
    ``metrics.recovery_rejoins`` when ``metrics`` (a ``WorkerMetrics``) is given."""
    if stall_s <= 0:
        return None
    watchdog = RecoveryWatchdog(app, RecoveryWatch(stall_s, max_rejoins), metrics=metrics)
    watchdog.start()
    return watchdog
