"""Read topics without a consumer group (assign + explicit offsets): replay, tests, demo, status."""

from __future__ import annotations

import time
from contextlib import suppress
from typing import Iterator

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from streams.kafka.clients import BULK_READER, make_consumer
from tamiyo.config import Settings

# Records per consume() call at most. Small batches let librdkafka fetch the next records while the
# caller works on these: a replay from Kafka to tensors took ~15 ms less (of ~250) with 500 than
# with 10,000, which waited for each large batch to fill (measured; 200 and 1,000 were no better).
_BATCH = 500
_POLL_S = 0.1  # longest wait in one consume() call; idle_timeout counts across calls


def partitions_of(consumer: Consumer, topic: str, timeout: float = 10.0) -> list[int]:
    metadata = consumer.list_topics(topic, timeout=timeout)
    info = metadata.topics.get(topic)
    if info is None or info.error is not None:
        raise RuntimeError(f"topic {topic!r} is not available: {getattr(info, 'error', 'missing')}")
    return sorted(info.partitions)


def watermarks(consumer: Consumer, topic: str, partition: int, attempts: int = 20,
               timeout: float = 10.0) -> tuple[int, int]:
    """(low, high) offsets of one partition, retrying while leadership settles (``timeout``: per attempt)."""
    for attempt in range(attempts):
        try:
            return consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
        except KafkaException as exc:
            if not exc.args[0].retriable() and exc.args[0].code() != KafkaError.NOT_LEADER_FOR_PARTITION:
                raise
            if attempt == attempts - 1:
                raise
            time.sleep(0.25)
    raise AssertionError("unreachable")


def all_watermarks(consumer: Consumer, topic: str) -> dict[int, tuple[int, int]]:
    """(low, high) offsets of every partition of ``topic``."""
    return {p: watermarks(consumer, topic, p) for p in partitions_of(consumer, topic)}


def high_watermarks(consumer: Consumer, topic: str) -> dict[int, int]:
    """High watermark of every partition of ``topic`` (where the next record will be written)."""
    return {p: high for p, (_low, high) in all_watermarks(consumer, topic).items()}


def partition_lag(committed: int, low: int, high: int) -> int:
    """Records of a partition a group has not committed: ``high - committed``. A group that never
    committed (a negative offset) has all of the retained records (``low`` on) ahead of it."""
    return max(high - (committed if committed >= 0 else low), 0)


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """``high_watermarks`` with a consumer of its own."""
    consumer = make_consumer(settings, **BULK_READER)
    try:
        return high_watermarks(consumer, topic)
    finally:
        consumer.close()


def read_topic(
    settings: Settings,
    topic: str,
    start: dict[int, int] | None = None,
    stop: dict[int, int] | None = None,
    idle_timeout: float = 5.0,
) -> Iterator[Message]:
    """Yield records from ``start`` (default: beginning) up to ``stop`` (default: the end right now).

    Stops when every partition reached its stop offset, or after ``idle_timeout`` s with nothing new.
    """
    for batch in read_batches(settings, topic, start, stop, idle_timeout):
        yield from batch


def read_batches(
    settings: Settings,
    topic: str,
    start: dict[int, int] | None = None,
    stop: dict[int, int] | None = None,
    idle_timeout: float = 5.0,
    consumer: Consumer | None = None,
) -> Iterator[list[Message]]:
    """``read_topic`` a fetched batch at a time (for bulk readers: no per-record generator step).
    Reads with ``consumer`` when given (reassigned, left open), else with a consumer of its own.
    With ``stop`` given, only its partitions are read (no metadata request)."""
    own = consumer is None
    consumer = consumer or make_consumer(settings, **BULK_READER)
    try:
        if stop is None:
            stop = high_watermarks(consumer, topic)
        parts = sorted(stop)
        begin = {p: (start or {}).get(p, 0) for p in parts}
        open_parts = {p for p in parts if begin[p] < stop.get(p, 0)}
        if not open_parts:
            return
        consumer.assign([TopicPartition(topic, p, begin[p]) for p in sorted(open_parts)])
        position = dict(begin)
        last_progress = time.monotonic()
        while open_parts:
            # librdkafka's batch consume waits until it has num_messages or the timeout passes: asking
            # for more than is left made every read end with a full timeout (0.5 s of a 1.1 s replay).
            # What is left is an upper bound (transaction markers and compaction leave offset gaps),
            # so the timeout stays short too.
            left = sum(stop[p] - position[p] for p in open_parts)
            batch = consumer.consume(num_messages=max(1, min(_BATCH, left)), timeout=_POLL_S)
            if not batch:
                if time.monotonic() - last_progress > idle_timeout:
                    return
                continue
            last_progress = time.monotonic()
            kept = []
            for message in batch:
                if message.error() is not None:
                    if message.error().code() == KafkaError._PARTITION_EOF:
                        continue
                    raise RuntimeError(f"error reading {topic}: {message.error()}")
                partition = message.partition()
                if partition not in open_parts:
                    continue
                after, end = message.offset() + 1, stop[partition]
                if after > end:
                    open_parts.discard(partition)
                    continue
                kept.append(message)
                position[partition] = after
                if after >= end:
                    open_parts.discard(partition)
            if kept:
                yield kept
    finally:
        if own:
            consumer.close()
        else:
            with suppress(KafkaException, RuntimeError):  # the caller may have closed it already
                consumer.unassign()


def header(message: Message, name: str) -> str | None:
    for key, value in message.headers() or []:
        if key == name:
            return value.decode() if value is not None else None
    return None
