"""Make Faust's seek to the committed offsets safe while records are being fetched and delivered.

The bug (faust-streaming 0.15.3; issue 4, "crashes lose nothing"): after a rebalance, Faust's table
recovery resumes the fetcher *before* it resumes the stream partitions and seeks them to their
committed offsets (``Recovery.on_recovery_completed`` → ``resume_partitions`` → ``perform_seek``).
While the seek is awaited, the fetcher fetches those partitions from the committed offset C and
starts delivering the batch to the agents. The seek then sets Faust's read offset back to C, but
the delivery loop goes on with the old batch: its next record (C + k) looks like a jump past
C, so Faust takes C+1 … C+k-1 for a "gap" (offsets removed by compaction or transaction markers)
and acks them. When the flow resumes, the agents' queues are cleared (those records were to be
fetched again after the seek), but the read offset has moved past them, so the fetched-again copies
are dropped as already read. The records that were waiting in a queue are committed without ever
reaching an agent: a contiguous run of lost messages on one partition. The same race can also
leave the read offset *ahead* of the seek (the record in delivery sets it after the seek): then no
gap is acked, but a single cleared record is committed over, because Faust's commit lets a hole of
one offset after the committed offset pass.

Partitions without a committed offset meet the same fate another way: Faust's seek leaves them
where they are, so what the resumed flow clears from the queues is never fetched again, and the
first commit starts after it. They can lose records without delivering any, too: while the tables
recover, the stream partitions are paused in Faust only, so aiokafka goes on fetching them, and
Faust drops what it fetched for a paused partition (``Consumer.getmany``) after aiokafka's position
has moved past it (measured: a new worker's first outcomes were never read; 1 run in ~15 of
tests/streams/test_redecision_after_crash_kafka.py with three running at once).

The guard orders the seek against fetching and delivering (one asyncio loop, no locks needed):

* ``perform_seek`` waits until no fetch and no delivery is in progress, and holds new ones from then
  until the flow has been resumed (``Consumer.resume_flow``, which Faust calls right after clearing
  the queues), so nothing delivered after the seek is cleared;
* every stream partition without a committed offset is seeked to its first unprocessed offset
  (after its last acked one, else its beginning);
* records of a batch fetched before their partition was seeked are not delivered (the seek moved the
  fetch position back, so they are fetched again and delivered then, against the right read offset).

Otherwise ``perform_seek`` below does what Faust's does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping

log = logging.getLogger(__name__)

#: Longest a seek waits for the fetch and delivery in progress (a delivery waits while an agent's
#: queue is full). After that it seeks anyway, as Faust would, and says so.
QUIESCE_TIMEOUT_S = 15.0
#: Longest fetching stays held after a seek when no flow resume follows it.
RELEASE_TIMEOUT_S = 10.0


class SeekGuard:
    """Per consumer: which partitions were seeked when, and whether a fetch or delivery is running."""

    def __init__(self) -> None:
        self.epoch = 0  # seeks completed
        self.seeked_at: dict[Any, int] = {}  # partition -> epoch of the seek that last moved it
        self.fetched_at = 0  # epoch when the latest batch was fetched
        self.fetching = 0  # fetches in progress (Faust runs one; counted to stay right if that changes)
        self.delivering = 0  # records handed to the delivery loop and not yet done with
        self.seeking = 0  # seeks in progress
        self.holding = False  # fetch and delivery wait: a seek is in progress, or the flow resume after it
        self.released = asyncio.Event()
        self.released.set()

    def stale(self, tp: Any, fetched_at: int) -> bool:
        """True when ``tp`` was seeked after the batch fetched at ``fetched_at`` was fetched."""
        return self.seeked_at.get(tp, -1) > fetched_at

    async def wait_released(self) -> None:
        while self.holding:
            await self.released.wait()

    async def quiesce(self, timeout: float = QUIESCE_TIMEOUT_S) -> bool:
        """Wait until no fetch and no delivery is in progress; False after ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.fetching or self.delivering:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    def begin_seek(self) -> None:
        self.seeking += 1
        self.holding = True
        self.released.clear()

    def end_seek(self, moved: list[Any]) -> None:
        """A seek finished; ``moved`` are the partitions whose fetch position it changed."""
        self.epoch += 1
        for tp in moved:
            self.seeked_at[tp] = self.epoch

    def leave_seek(self) -> None:
        self.seeking -= 1
        if not self.seeking:
            asyncio.get_running_loop().call_later(RELEASE_TIMEOUT_S, self.release, self.epoch)

    def release(self, epoch: int | None = None) -> None:
        """The flow resumed (or ``epoch``'s seek timed out waiting for it): fetch and deliver again."""
        if self.seeking or (epoch is not None and epoch != self.epoch):
            return
        self.holding = False
        self.released.set()


_GUARD_ATTRIBUTE = "_tamiyo_seek_guard"


def existing_guard(consumer: Any) -> SeekGuard | None:
    """The consumer's guard, if it has one yet (for reading its state; never creates one)."""
    return consumer.__dict__.get(_GUARD_ATTRIBUTE)


def guard_of(consumer: Any) -> SeekGuard:
    guard = existing_guard(consumer)
    if guard is None:
        guard = consumer.__dict__[_GUARD_ATTRIBUTE] = SeekGuard()
    return guard


def guarded_fetch(fetch: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """``Consumer._getmany``: no fetch while a seek holds; note when each batch was fetched."""

    async def _getmany(self: Any, active_partitions: Any, timeout: float) -> Any:
        guard = guard_of(self)
        await guard.wait_released()
        guard.fetching += 1
        try:
            return await fetch(self, active_partitions, timeout)
        finally:
            guard.fetched_at = guard.epoch
            guard.fetching -= 1

    return _getmany


def guarded_delivery(deliver: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    """``Consumer.getmany``: hold records while a seek holds; drop those it made stale."""

    async def getmany(self: Any, timeout: float) -> AsyncIterator[Any]:
        guard = guard_of(self)
        fetched_at: int | None = None
        async for tp, message in deliver(self, timeout):
            if fetched_at is None:
                fetched_at = guard.fetched_at
            if guard.holding:
                await guard.wait_released()
                if not self.flow_active or message.generation_id != self.app.consumer_generation_id:
                    return  # what Faust does with the rest of a batch when the flow stops mid-batch
            if guard.stale(tp, fetched_at):
                continue  # fetched again from the seek position
            guard.delivering += 1
            try:
                yield tp, message
            finally:
                guard.delivering -= 1

    return getmany


def guarded_seek(ensure_tp: Callable[[Any], Any]) -> Callable[[Any], Awaitable[None]]:
    """``Consumer.perform_seek``: Faust's seek to the committed offsets, ordered by the guard."""

    async def perform_seek(self: Any) -> None:
        guard = guard_of(self)
        guard.begin_seek()
        try:
            if not await guard.quiesce():
                log.warning("seek: a fetch or delivery still running after %.0f s; seeking anyway",
                            QUIESCE_TIMEOUT_S)
            committed: Mapping[Any, int | None] = await self.seek_to_committed()
            restarted = await _restart_uncommitted(self, committed, ensure_tp)
            self._read_offset.update({tp: offset if offset is not None and offset >= 0 else None
                                      for tp, offset in committed.items()})
            self._committed_offset.update({ensure_tp(tp): offset or None
                                           for tp, offset in committed.items() if offset is not None})
            # aiokafka moves only partitions with a committed offset > 0 (seek_to_committed).
            guard.end_seek([ensure_tp(tp) for tp, offset in committed.items()
                            if tp in restarted or (offset and offset > 0)])
        finally:
            guard.leave_seek()

    return perform_seek


async def _restart_uncommitted(consumer: Any, committed: Mapping[Any, int | None],
                               ensure_tp: Callable[[Any], Any]) -> set[Any]:
    """Seek each stream partition without a committed offset to its first unprocessed offset;
    returns those partitions. Not only those that delivered records: what was fetched while the
    partition was paused was dropped unseen, and its fetch position is past it all the same."""
    acks = consumer.app.topics.acks_enabled_for
    uncommitted = [tp for tp, offset in committed.items() if not offset and acks(tp.topic)]
    if not uncommitted:
        return set()
    targets = {tp: max(consumer._acked[ensure_tp(tp)]) + 1 for tp in uncommitted
               if consumer._acked.get(ensure_tp(tp))}
    unprocessed = [tp for tp in uncommitted if tp not in targets]
    if unprocessed:
        targets.update(await consumer.earliest_offsets(*unprocessed))
    await consumer.seek_wait(targets)
    return set(targets)


def guarded_resume(resume: Callable[[Any], None]) -> Callable[[Any], None]:
    """``Consumer.resume_flow``: the queues have been cleared; a finished seek stops holding."""

    def resume_flow(self: Any) -> None:
        resume(self)
        guard_of(self).release()

    return resume_flow


_installed = False


def install_seek_guard() -> None:
    """Patch Faust's consumer classes once per process (idempotent)."""
    global _installed
    if _installed:
        return
    from faust.transport.consumer import Consumer, ThreadDelegateConsumer, ensure_TP

    ThreadDelegateConsumer._getmany = guarded_fetch(ThreadDelegateConsumer._getmany)
    Consumer.getmany = guarded_delivery(Consumer.getmany)
    Consumer.perform_seek = guarded_seek(ensure_TP)
    Consumer.resume_flow = guarded_resume(Consumer.resume_flow)
    _installed = True
