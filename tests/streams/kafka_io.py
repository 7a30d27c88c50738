"""Small Kafka helpers for the stream tests: produce records, collect a topic until a condition."""

from __future__ import annotations

import time
from typing import Callable

from confluent_kafka import TopicPartition

from schemas import encode
from streams.kafka.clients import make_consumer, make_producer
from streams.kafka.reader import partitions_of
from tamiyo.config import Settings


def produce(settings: Settings, topic: str, items: list[tuple[bytes | None, bytes]]) -> None:
    producer = make_producer(settings)
    for key, value in items:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0


def produce_records(settings: Settings, topic: str, name: str, records: list[dict]) -> None:
    produce(settings, topic, [(r["model_id"].encode(), encode(name, r)) for r in records])


class TopicCollector:
    """Reads a whole topic from the beginning, continuously, into a list of messages. Collectors a
    test leaves open (a failed assertion skips its ``close()``) are closed after it
    (``close_open_collectors``, an autouse fixture of tests/streams): a failed test's traceback keeps
    its locals alive, and an open consumer of a torn-down broker retried its connection every 10 ms
    through the tests that followed."""

    _open: set["TopicCollector"] = set()

    def __init__(self, settings: Settings, topic: str) -> None:
        self.consumer = make_consumer(settings)
        TopicCollector._open.add(self)
        self.consumer.assign([TopicPartition(topic, p, 0) for p in partitions_of(self.consumer, topic)])
        self.messages: list = []

    def poll(self, seconds: float = 0.5) -> list:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for message in self.consumer.consume(1000, timeout=0.1):
                if message.error() is None:
                    self.messages.append(message)
        return self.messages

    def wait_for(self, condition: Callable[[list], bool], timeout: float = 60.0, alive: Callable[[], bool] = lambda: True) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll(0.3)
            if condition(self.messages):
                return self.messages
            if not alive():
                raise AssertionError("the worker died")
        raise AssertionError(f"condition not met within {timeout}s; {len(self.messages)} messages seen")

    def close(self) -> None:
        if self in TopicCollector._open:
            TopicCollector._open.discard(self)
            self.consumer.close()


def close_open_collectors() -> None:
    for collector in list(TopicCollector._open):
        collector.close()
