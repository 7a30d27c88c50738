"""The seek guard (streams.faust_seek): Faust's post-rebalance seek against a batch in delivery.

A stand-in consumer drives the guarded functions the way Faust's delivery loop does: fetch a
batch, then hand its records over one at a time. The real race (and the lost messages) shows up
on Apache Kafka in tests/chaos/test_worker_crash.py.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, AsyncIterator

from faust.types import TP

from streams.faust_seek import guard_of, guarded_delivery, guarded_fetch, guarded_seek

A, B = TP("t.health", 0), TP("t.health", 1)


class StandIn:
    """What the guarded functions use of Faust's Consumer, with a scripted fetch and seek."""

    def __init__(self, batches: list[list[tuple[TP, int]]], committed: dict[TP, int | None]) -> None:
        self.batches = batches
        self.committed = committed
        self.flow_active = True
        self.app = SimpleNamespace(consumer_generation_id=1)
        self._read_offset: dict[TP, int | None] = {}
        self._committed_offset: dict[TP, int | None] = {}
        self.seeks_started = 0
        self.fetches = 0

    async def _fetch(self, active: Any, timeout: float) -> list[tuple[TP, int]]:
        self.fetches += 1
        await asyncio.sleep(0.01)
        return self.batches.pop(0) if self.batches else []

    async def _deliver(self, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        for tp, offset in await self._getmany(None, timeout):  # like Faust's getmany
            yield tp, SimpleNamespace(offset=offset, generation_id=self.app.consumer_generation_id)

    async def seek_to_committed(self) -> dict[TP, int | None]:
        self.seeks_started += 1
        await asyncio.sleep(0.01)
        return dict(self.committed)

    _getmany = guarded_fetch(_fetch)
    getmany = guarded_delivery(_deliver)
    perform_seek = guarded_seek(lambda tp: tp)


def test_a_seek_waits_for_the_delivery_in_progress_and_drops_what_it_made_stale() -> None:
    async def scenario() -> tuple[list[tuple[TP, int]], StandIn]:
        consumer = StandIn([[(A, 100), (B, 7), (A, 101), (B, 8), (A, 102)]], {A: 100, B: None})
        delivered: list[tuple[TP, int]] = []
        seek = None
        async for tp, message in consumer.getmany(1.0):
            delivered.append((tp, message.offset))
            if seek is None:  # the recovery seeks while the first record is being delivered
                seek = asyncio.ensure_future(consumer.perform_seek())
                await asyncio.sleep(0.05)
                assert consumer.seeks_started == 0, "the seek must wait for the delivery in progress"
        await seek
        return delivered, consumer

    delivered, consumer = asyncio.run(scenario())
    # A was moved back to 100 by the seek: the rest of its old batch is fetched again, not delivered
    # now. B has no committed offset, so the seek did not move it: its records must still come.
    assert delivered == [(A, 100), (B, 7), (B, 8)]
    assert consumer._read_offset == {A: 100, B: None} and consumer._committed_offset == {A: 100}
    assert guard_of(consumer).seeked_at == {A: 1}


def test_no_fetch_starts_while_a_seek_is_in_progress_and_a_seek_waits_for_a_fetch() -> None:
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
        await fetching
        return events

    events = asyncio.run(scenario())
    # The seek waited for the fetch in progress, and the next fetch waited for the seek.
    assert events == [("fetched", [(A, 5)], 0), ("seeked",), ("fetched", [(A, 100)], 1)]


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

            asyncio.ensure_future(rebalance())
        return delivered

    assert asyncio.run(scenario()) == [1]
