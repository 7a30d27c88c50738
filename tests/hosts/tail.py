"""Test helper: read Tamiyo topics from the beginning and decode everything on them."""

from __future__ import annotations

import time
from typing import Any, Callable

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from schemas import decode
from schemas.health_batch import batch_signals
from streams.kafka.clients import make_consumer
from tamiyo.config import Settings

Record = tuple[str, str, dict[str, Any]]  # (topic, record name, value)


class Tail:
    """Every message of ``topics`` since the beginning; each must decode (else the test fails).
    A HealthReport is recorded, and so is each HealthSignal in it."""

    def __init__(self, settings: Settings, topics: list[str]) -> None:
        self.consumer = make_consumer(settings)
        parts = []
        for topic in topics:
            meta = self.consumer.list_topics(topic, timeout=10).topics[topic]
            parts += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions]
        self.consumer.assign(parts)
        self.records: list[Record] = []
        self.keys_ok = True

    def pump(self, timeout: float = 0.2) -> None:
        for message in self.consumer.consume(num_messages=10_000, timeout=timeout):
            if message.error() is not None:
                continue
            decoded = decode(message.value())  # raises on anything undecodable
            self.keys_ok &= message.key() == decoded.value["model_id"].encode()
            self.records.append((message.topic(), decoded.name, decoded.value))
            if decoded.name == "HealthReport":  # its signals count as HealthSignals too
                self.records += [(message.topic(), "HealthSignal", s) for s in decoded.value["signals"]]
            elif decoded.name == "HealthBatch":
                self.records += [(message.topic(), "HealthSignal", s) for s in batch_signals(decoded.value)]

    def wait_for(self, predicate: Callable[[Record], bool], count: int = 1, timeout: float = 30.0) -> list[Record]:
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.records if predicate(r)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(found)}/{count} matching records after {timeout} s")
            self.pump()

    def of(self, name: str, **fields: Any) -> list[dict[str, Any]]:
        return [v for _, n, v in self.records if n == name and all(v.get(k) == x for k, x in fields.items())]

    def close(self) -> None:
        self.consumer.close()
