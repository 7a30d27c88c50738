"""Commit floors (streams.faust_compat.hold_commit): a parked message caps what Faust commits."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

from faust.transport.consumer import Consumer
from faust.types import TP
from intervaltree import IntervalTree

from streams import faust_compat


def fake_consumer() -> SimpleNamespace:
    return SimpleNamespace(_acked=defaultdict(list), _acked_index=defaultdict(set), _gap=defaultdict(IntervalTree),
                           _committed_offset=defaultdict(lambda: None))


def event(tp: TP, offset: int) -> SimpleNamespace:
    return SimpleNamespace(message=SimpleNamespace(tp=tp, offset=offset))


def ack(consumer: SimpleNamespace, tp: TP, *offsets: int) -> None:
    consumer._acked[tp].extend(offsets)
    consumer._acked_index[tp].update(offsets)


def test_nothing_at_or_after_a_held_offset_is_committed_until_it_is_released() -> None:
    tp = TP("t.health", 0)
    consumer = fake_consumer()
    consumer._committed_offset[tp] = 10
    parked = event(tp, 12)
    faust_compat.hold_commit(parked)
    try:
        ack(consumer, tp, 10, 11, 12, 13, 14)  # the parked message was acked with its batch
        assert Consumer._new_offset(consumer, tp) == 12  # up to, not past, the parked message
        consumer._committed_offset[tp] = 12
        assert Consumer._new_offset(consumer, tp) is None  # nothing more while it is held
        assert sorted(consumer._acked[tp]) == [12, 13, 14]  # Faust still knows the later acks
    finally:
        faust_compat.release_commit([parked])
    assert Consumer._new_offset(consumer, tp) == 15
    assert tp not in faust_compat._floors


def test_holds_are_per_partition_and_counted() -> None:
    a, b = TP("t.health", 0), TP("t.health", 1)
    consumer = fake_consumer()
    twice = event(a, 3)
    faust_compat.hold_commit(twice)
    faust_compat.hold_commit(twice)  # parked again after a retried batch
    try:
        ack(consumer, a, 0, 1, 2, 3, 4)
        ack(consumer, b, 0, 1, 2)
        assert Consumer._new_offset(consumer, b) == 3  # other partitions are not affected
        assert Consumer._new_offset(consumer, a) == 3
        faust_compat.release_commit([twice])
        consumer._committed_offset[a] = 3
        assert Consumer._new_offset(consumer, a) is None  # still held once
    finally:
        faust_compat.release_commit([twice, None])
    assert Consumer._new_offset(consumer, a) == 5
