"""Faust internals, part one (part two, the post-rebalance seek, is ``streams/faust_seek.py``).

Faust picks a table's changelog partition from the *current event*. Inside ``take_events`` the
current event is whichever message came last, so a batched write for model A could land in the
changelog partition of model B and be recovered on the wrong worker. ``as_current`` makes the
event that carried the model's own message current while its table entry is written. A write that
no message caused (a timer's) uses a ``PartitionEvent`` of the model's partition instead.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from faust import streams as _faust_streams


@contextmanager
def as_current(event: Any) -> Iterator[None]:
    if event is None:
        yield
        return
    token = _faust_streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _faust_streams._current_event.reset(token)


@dataclass(frozen=True)
class _Origin:
    topic: str
    partition: int


class PartitionEvent:
    """Stands in for an event of ``topic``/``partition`` while a timer writes a table entry.

    Faust's ``partition_for_key`` reads only ``event.message.topic`` (to check co-partitioning) and
    ``event.message.partition``; without a current event a table write raises ``TypeError``.
    A plain object because ``as_current`` keeps a weak reference (a ``SimpleNamespace`` cannot have one).
    """

    def __init__(self, topic: str, partition: int) -> None:
        self.message = _Origin(topic, partition)


def active_partitions(app: Any, topic: str) -> set[int]:
    """The partitions of ``topic`` this worker actively consumes (standby replicas excluded)."""
    try:
        return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic}
    except Exception:  # not assigned yet / rebalancing
        return set()


def tables_settled(app: Any) -> bool:
    """False from the start of a rebalance until Faust resumes the streams after table recovery.

    Meanwhile the tables of newly assigned partitions are only partly read back from their
    changelogs: a timer or task that reads them then (the gate state's last decided epoch, a
    window) sees an older state than the one the previous owner acted on. Agents are paused by
    Faust until then; timers and tasks are not.
    """
    return not (getattr(app, "rebalancing", False) or getattr(app, "in_recovery", False))


def highwater_and_committed(consumer: Any, tp: Any) -> tuple[int | None, int]:
    """The high watermark of ``tp`` as last fetched (None before any fetch) and the committed offset.

    Committed, not the fetch position: the position runs ahead of what the agents have handled.
    Faust keeps the last commit per partition, seeded from the group's commit on assignment (None,
    nothing committed yet, counts as 0).
    """
    try:
        end = consumer.highwater(tp)
    except Exception:  # not assigned (any more)
        end = None
    committed = getattr(consumer, "_committed_offset", {}).get(tp)
    return (None if end is None else int(end)), int(committed or 0)


# Commit floors. A message can be acked to Faust (its batch is done) while its handling is still
# pending in memory — a HealthSignal parked until its model's topology arrives. Faust would commit
# past it, and a crash would then lose it. ``hold_commit`` keeps the consumer group's committed
# offset of that partition at or below the message until ``release_commit`` (called once the message
# has been archived or dead-lettered and that output delivered); after a crash the message is read
# again. The cap is applied where Faust computes the offset to commit (``Consumer._new_offset``).
_floors: dict[Any, dict[int, int]] = {}
_installed = False


def hold_commit(event: Any) -> None:
    """Do not commit the offset of ``event``'s message, or any later one of its partition, for now."""
    if event is None:
        return
    _install()
    message = event.message
    holds = _floors.setdefault(message.tp, {})
    holds[message.offset] = holds.get(message.offset, 0) + 1


def release_commit(events: Any) -> None:
    """Undo ``hold_commit`` for each event (its output has been delivered)."""
    for event in events:
        if event is None:
            continue
        message = event.message
        holds = _floors.get(message.tp)
        if not holds or message.offset not in holds:
            continue
        holds[message.offset] -= 1
        if holds[message.offset] <= 0:
            del holds[message.offset]
        if not holds:
            del _floors[message.tp]


def held_messages() -> int:
    """Messages acked but not yet handled (parked) that hold their partition's commit back."""
    return sum(sum(holds.values()) for holds in _floors.values())


def _install() -> None:
    global _installed
    if _installed:
        return
    from faust.transport.consumer import Consumer

    original = Consumer._new_offset

    def _new_offset(self: Any, tp: Any) -> Any:
        holds = _floors.get(tp)
        acked = self._acked[tp] if holds else None
        if not holds or not acked:
            return original(self, tp)
        floor = min(holds)
        above = [offset for offset in acked if offset >= floor]
        if not above:
            return original(self, tp)
        acked[:] = [offset for offset in acked if offset < floor]  # Faust sees only what is below the floor
        try:
            return original(self, tp) if acked else None
        finally:
            acked.extend(above)
            acked.sort()

    Consumer._new_offset = _new_offset
    _installed = True


def install_fetch_max_wait(milliseconds: int) -> None:
    """Set the worker consumer's fetch long-poll (Faust 0.15 hard-codes ``fetch_max_wait_ms=1500``).

    aiokafka sends one fetch request per broker at a time, and only for partitions whose fetched
    records have all been consumed. A request issued while the busy partitions still had records
    buffered carries only idle ones (topology, quiet outcome partitions); the broker holds it for the
    whole wait, and no busy partition can be fetched until it returns. Measured with 1,000 models
    sending single HealthSignals: outcomes reached the policy agent 1-2 s late (p50 ~1 s) on an idle
    CPU. The wait bounds that stall. Idempotent; applies to consumers created afterwards.
    """
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    create = getattr(AIOKafkaConsumerThread._create_worker_consumer, "_tamiyo_wrapped", None) \
        or AIOKafkaConsumerThread._create_worker_consumer

    def _create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = create(self, transport)
        consumer._fetch_max_wait_ms = milliseconds  # read by AIOKafkaConsumer.start() for its Fetcher
        return consumer

    _create_worker_consumer._tamiyo_wrapped = create  # type: ignore[attr-defined]
    AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer
