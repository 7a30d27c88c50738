"""Read ``tamiyo.experience`` between two offsets or times into decoded records (no consumer group)."""

from __future__ import annotations

import gc
import logging
from collections.abc import Collection, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from tqdm import tqdm

from schemas import DecodeError
from schemas.codec import HEADER_SIZE, registry
from schemas.numeric_arrays import decode_arrays, read_arrays
from streams.archive import TYPE_HEADER
from streams.kafka.clients import BULK_READER, make_consumer
from streams.kafka.reader import all_watermarks, read_batches
from streams.pauses import freeze_heap
from tamiyo.config import Settings

log = logging.getLogger(__name__)


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs 3x (a replay makes ~10^5)
class ExperienceRecord:
    """One archived message: its record type, fields, and where it sits on the experience topic.
    Float arrays (a DecisionRecord's node_features and distribution) are numpy arrays: see
    ``schemas.numeric_arrays``."""

    name: str
    value: dict[str, Any] | None  # None: left undecoded (replay's ``undecoded``); ``decoded()`` reads ``raw``
    partition: int
    offset: int
    timestamp_ms: int
    raw: bytes | None = None

    def decoded(self) -> dict[str, Any]:
        """The record's fields, decoding ``raw`` first when replay left the record undecoded."""
        if self.value is None:
            self.value = decode_arrays(self.raw)[1]
        return self.value


@dataclass
class DataWindow:
    """What a replay read: logged to MLflow with every training run."""

    topic: str
    start_offsets: dict[int, int] = field(default_factory=dict)
    end_offsets: dict[int, int] = field(default_factory=dict)
    start_ms: int | None = None
    end_ms: int | None = None
    records: int = 0
    skipped: int = 0  # read but not decoded: their type header named a type the caller did not ask for
    undecodable: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partitions": sorted(self.end_offsets),
            "start_offsets": {str(k): v for k, v in self.start_offsets.items()},
            "end_offsets": {str(k): v for k, v in self.end_offsets.items()},
            "start_ms": self.start_ms, "end_ms": self.end_ms,
            "records": self.records, "skipped": self.skipped, "undecodable": self.undecodable,
        }


def offsets_for_time(settings: Settings, topic: str, timestamp_ms: int | None, default: str,
                     consumer: Consumer | None = None,
                     marks: dict[int, tuple[int, int]] | None = None) -> dict[int, int]:
    """First offset at or after ``timestamp_ms`` per partition (``default``: 'beginning' or 'end').
    Uses ``consumer`` when given (left open), else a consumer of its own; ``marks``: the topic's
    ``all_watermarks`` when the caller has them already."""
    own = consumer is None
    consumer = consumer or make_consumer(settings)
    try:
        marks = marks if marks is not None else all_watermarks(consumer, topic)
        parts = sorted(marks)
        if timestamp_ms is None:
            return {p: marks[p][0] if default == "beginning" else marks[p][1] for p in parts}
        found = consumer.offsets_for_times([TopicPartition(topic, p, timestamp_ms) for p in parts], timeout=10.0)
        # -1 means "no record at or after that time": the end of the partition.
        return {tp.partition: (tp.offset if tp.offset >= 0 else marks[tp.partition][1]) for tp in found}
    finally:
        if own:
            consumer.close()


def replay(
    settings: Settings,
    start_ms: int | None = None,
    end_ms: int | None = None,
    start_offsets: dict[int, int] | None = None,
    end_offsets: dict[int, int] | None = None,
    progress: bool = True,
    types: Collection[str] | None = None,
    undecoded: Collection[str] = (),
) -> tuple[list[ExperienceRecord], DataWindow]:
    """Decode every experience record in the window (only those of ``types`` when given).

    Records of ``undecoded`` types that name their schema (single-object encoding) are returned
    with ``value`` None and their bytes in ``raw``, for a caller that needs few of them decoded.

    Times are also checked per record, because brokers answer time lookups coarsely (Tansu by write
    time, not record time). With ``types``, a record of another type is counted in ``DataWindow.skipped``
    without being decoded: its type is the schema its single-object header names, else what its
    ``tamiyo.type`` header says; a record with neither is decoded to find out.
    """
    topic = settings.topics.experience
    with closing(make_consumer(settings, **BULK_READER)) as consumer:  # one connection for the lookups and the read
        marks = None if start_offsets and end_offsets else all_watermarks(consumer, topic)
        start = start_offsets or offsets_for_time(settings, topic, start_ms, "beginning", consumer, marks)
        stop = end_offsets or offsets_for_time(settings, topic, end_ms, "end", consumer, marks)
        window = DataWindow(topic, dict(start), dict(stop), start_ms, end_ms)
        total = sum(max(0, stop.get(p, 0) - start.get(p, 0)) for p in stop)
        kinds = frozenset(types) if types is not None else None
        wanted = {name.encode() for name in kinds or ()}
        # A single-object value names its schema in its first bytes: cheaper to look up than the
        # record's headers. Other values (Confluent-framed, unknown) are judged by the type header.
        by_header = registry().by_header
        timed = start_ms is not None or end_ms is not None
        lazy = frozenset(undecoded)
        records: list[ExperienceRecord] = []
        with tqdm(total=total, unit="rec", desc="replay", disable=not progress, leave=False) as bar, gc_paused():
            skipped = 0
            for batch in read_batches(settings, topic, start, stop, consumer=consumer):
                bar.update(len(batch))
                for message in batch:
                    if timed:
                        ts = message.timestamp()[1]
                        if (start_ms is not None and ts < start_ms) or (end_ms is not None and ts >= end_ms):
                            continue
                    data = message.value()
                    known = by_header.get(data[:HEADER_SIZE]) if data is not None else None
                    if kinds is not None and not (known.name in kinds if known is not None
                                                  else _wanted(message.headers(), wanted)):
                        skipped += 1
                        continue
                    if known is not None and known.name in lazy:
                        records.append(ExperienceRecord(known.name, None, message.partition(), message.offset(),
                                                        message.timestamp()[1], data))
                        continue
                    try:
                        name, value = ((known.name, read_arrays(known, data, HEADER_SIZE)) if known is not None
                                       else decode_arrays(data))
                    except DecodeError as exc:
                        window.undecodable += 1
                        log.warning("undecodable experience record at %d/%d: %s", message.partition(), message.offset(),
                                    exc)
                        continue
                    if kinds is not None and name not in kinds:
                        skipped += 1
                        continue
                    records.append(ExperienceRecord(name, value, message.partition(), message.offset(),
                                                    message.timestamp()[1]))
            window.skipped = skipped
    window.records = len(records)
    return records, window


@contextmanager
def gc_paused() -> Iterator[None]:
    """Bulk decoding allocates millions of objects that all stay alive: the cyclic collector would
    re-scan them again and again (measured: a third of replay time, and more while episodes are
    built on top of them) for no garbage. Wrap replay → episodes → transitions in it; not training.

    On the way out the live heap is frozen (``gc.freeze``) before the collector is enabled again:
    otherwise the first collection after the pause walks everything allocated during it (~10 % of
    a replay to tensors, measured). Frozen objects are still freed by reference counting when
    dropped; only a reference cycle among them would wait for the process's exit (``freeze_heap``
    unfreezes then) — the records, episodes and arrays built here have none."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            freeze_heap()
            gc.enable()


def _wanted(headers: list[tuple[str, bytes]] | None, wanted: set[bytes]) -> bool:
    """False only when the type header names an unwanted type (no header: decode to find out)."""
    if headers and headers[0][0] == TYPE_HEADER:  # the archive writes it first
        return headers[0][1] in wanted
    for key, value in headers or ():
        if key == TYPE_HEADER:
            return value in wanted
    return True
