"""The seek guard (streams.faust_seek): Faust's post-rebalance seek against a batch in delivery.

A stand-in consumer drives the guarded functions the way Faust does: the delivery loop fetches a
batch and hands its records over one at a time, while the recovery seeks to the committed offsets
and then resumes the flow (``perform_seek`` → clear the queues → ``resume_flow``). The real race
(and the lost messages) shows up on Apache Kafka in tests/chaos/test_worker_crash.py.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any, AsyncIterator

import pytest
from faust.types import TP

from streams import faust_seek
from streams.faust_seek import guard_of, guarded_delivery, guarded_fetch, guarded_resume, guarded_seek

A, B, D = TP("t.health", 0), TP("t.health", 1), TP("t.health", 2)
C = TP("t-graphs-changelog", 0)  # a table's changelog: Faust positions it itself, nothing is committed


class StandIn:
    """What the guarded functions use of Faust's Consumer, with a scripted fetch and seek."""

    def __init__(self, batches: list[list[tuple[TP, int]]], committed: dict[TP, int | None]) -> None:
        self.batches = batches
        self.committed = committed
        self.flow_active = True
        self.app = SimpleNamespace(consumer_generation_id=1,
                                   topics=SimpleNamespace(acks_enabled_for=lambda topic: topic == "t.health"))
        self._read_offset: dict[TP, int | None] = {}
        self._committed_offset: dict[TP, int | None] = {}
        self._acked: defaultdict[TP, list[int]] = defaultdict(list)
        self.seeks_started = 0
        self.seeked_to: dict[TP, int] = {}

    async def _fetch(self, active: Any, timeout: float) -> list[tuple[TP, int]]:
        await asyncio.sleep(0.01)
        return self.batches.pop(0) if self.batches else []

    async def _deliver(self, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        for tp, offset in await self._getmany(None, timeout):  # like Faust's getmany
            yield tp, SimpleNamespace(offset=offset, generation_id=self.app.consumer_generation_id)

    async def seek_to_committed(self) -> dict[TP, int | None]:
        self.seeks_started += 1
        await asyncio.sleep(0.01)
        return dict(self.committed)

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        return {tp: 0 for tp in tps}

    async def seek_wait(self, offsets: dict[TP, int]) -> None:
        self.seeked_to.update(offsets)

    def _resume(self) -> None:
        self.flow_active = True

    _getmany = guarded_fetch(_fetch)
    getmany = guarded_delivery(_deliver)
    perform_seek = guarded_seek(lambda tp: tp)
    resume_flow = guarded_resume(_resume)

    async def recover(self) -> None:
        """What Faust's recovery does once the tables are ready."""
        await self.perform_seek()
        await asyncio.sleep(0.02)  # the queues are cleared here
        self.resume_flow()


def test_a_seek_waits_for_the_delivery_in_progress_and_drops_what_it_made_stale() -> None:
    async def scenario() -> tuple[list[tuple[TP, int]], StandIn]:
        consumer = StandIn([[(A, 100), (B, 7), (C, 40), (A, 101), (B, 8), (C, 41), (A, 102)]],
                           {A: 100, B: None, C: None})
        delivered: list[tuple[TP, int]] = []
        recovery = None
        async for tp, message in consumer.getmany(1.0):
            delivered.append((tp, message.offset))
            if recovery is None:  # the recovery seeks while the first record is being delivered
                recovery = asyncio.ensure_future(consumer.recover())
                await asyncio.sleep(0.05)
                assert consumer.seeks_started == 0, "the seek must wait for the delivery in progress"
        await recovery
        return delivered, consumer

    delivered, consumer = asyncio.run(scenario())
    # A went back to its committed offset and B (nothing committed, nothing processed) to its
    # beginning: the rest of their old batch is fetched again, not delivered now. The changelog C
    # was not moved: its records come, after the flow resumed.
    assert delivered == [(A, 100), (C, 40), (C, 41)]
    assert consumer.seeked_to == {B: 0}
    assert consumer._read_offset == {A: 100, B: None, C: None} and consumer._committed_offset == {A: 100}
    assert guard_of(consumer).seeked_at == {A: 1, B: 1}


def test_held_records_come_only_after_the_flow_resumed() -> None:
    async def scenario() -> list[str]:
        consumer = StandIn([[(C, 1), (C, 2)]], {C: None})  # a changelog: the seek leaves it where it is
        events: list[str] = []

        async def recover() -> None:
            await consumer.perform_seek()
            events.append("seeked")
            await asyncio.sleep(0.05)
            events.append("queues cleared")
            consumer.resume_flow()

        recovery = None
        async for _, message in consumer.getmany(1.0):
            events.append(f"delivered {message.offset}")
            if recovery is None:  # the seek starts while the first record is being delivered
                recovery = asyncio.ensure_future(recover())
                await asyncio.sleep(0.005)
        await recovery
        return events

    assert asyncio.run(scenario()) == ["delivered 1", "seeked", "queues cleared", "delivered 2"]


def test_an_uncommitted_partition_restarts_at_its_first_unprocessed_offset() -> None:
    async def scenario() -> StandIn:
        consumer = StandIn([], {A: None, B: None, D: None, C: None})
        consumer._read_offset.update({A: 12, B: 3, C: 40})  # delivered since the assignment: A, B, C
        consumer._acked[A].extend([10, 11])  # A processed up to 11; B processed nothing yet
        await consumer.recover()
        return consumer

    consumer = asyncio.run(scenario())
    # D delivered nothing, but what Faust fetched for it while it was paused was dropped unseen: it
    # starts at its beginning too. C is a changelog (Faust positions it itself): not moved.
    assert consumer.seeked_to == {A: 12, B: 0, D: 0}
    assert guard_of(consumer).seeked_at == {A: 1, B: 1, D: 1}


def test_no_fetch_starts_until_the_flow_resumed_and_a_seek_waits_for_a_fetch() -> None:
    async def scenario() -> list[tuple]:
        consumer = StandIn([[(A, 5)], [(A, 100)]], {A: 100})
        events: list[tuple] = []
        guard = guard_of(consumer)

        async def fetch_twice() -> None:
            for _ in range(2):
                batch = await consumer._getmany(None, 1.0)
                events.append(("fetched", batch, guard.fetched_at))

        fetching = asyncio.ensure_future(fetch_twice())
        await asyncio.sleep(0)  # the first fetch is in progress
        assert guard.fetching
        await consumer.perform_seek()
        events.append(("seeked",))
        await asyncio.sleep(0.05)
        events.append(("resumed",))
        consumer.resume_flow()
        await fetching
        return events

    events = asyncio.run(scenario())
    assert events == [("fetched", [(A, 5)], 0), ("seeked",), ("resumed",), ("fetched", [(A, 100)], 1)]


def test_a_seek_without_a_flow_resume_stops_holding_after_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faust_seek, "RELEASE_TIMEOUT_S", 0.05)

    async def scenario() -> float:
        consumer = StandIn([[(A, 100)]], {A: 100})
        await consumer.perform_seek()
        started = asyncio.get_running_loop().time()
        await consumer._getmany(None, 1.0)
        return asyncio.get_running_loop().time() - started

    assert 0.04 < asyncio.run(scenario()) < 1.0


def test_records_held_during_a_seek_are_dropped_when_the_generation_changed() -> None:
    async def scenario() -> list[int]:
        consumer = StandIn([[(B, 1), (B, 2)]], {})
        delivered: list[int] = []
        guard = guard_of(consumer)
        async for _, message in consumer.getmany(1.0):
            delivered.append(message.offset)
            guard.begin_seek()  # a seek starts; meanwhile a rebalance moves to the next generation

            async def rebalance() -> None:
                await asyncio.sleep(0.02)
                consumer.app.consumer_generation_id = 2
                guard.end_seek([])
                guard.leave_seek()
                consumer.resume_flow()

            asyncio.ensure_future(rebalance())
        return delivered

    assert asyncio.run(scenario()) == [1]
