"""Kafka plumbing shared by the real host and the fleet: a publisher and a commands reader."""

from __future__ import annotations

import logging
import time
from typing import Any, Iterable

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from hosts.partitioner import partition_for
from schemas import DecodeError, decode_as, encode
from schemas.health_batch import health_batch
from streams.kafka.clients import make_consumer, make_producer
from tamiyo.config import Settings

log = logging.getLogger(__name__)


def health_report(model_id: str, run_id: str, signals: list[dict[str, Any]]) -> dict[str, Any]:
    """The HealthReport record carrying ``signals`` (one step's HealthSignals of one model and run)."""
    return {"model_id": model_id, "run_id": run_id, "signals": signals}


class Publisher:
    """Keyed Avro producer that never blocks on a full queue for long and counts what it sent."""

    def __init__(self, settings: Settings, **overrides: Any) -> None:
        failures = self._failures = [0]  # the callback must not hold self: no cycle keeps the producer alive

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                failures[0] += 1
                if failures[0] <= 10 or failures[0] % 1000 == 0:
                    log.warning("delivery failed (%d so far): %s", failures[0], err)

        conf = {
            "linger.ms": 20,
            "queue.buffering.max.messages": 1_000_000,
            "batch.num.messages": 10_000,
            "delivery.report.only.error": True,
            "on_delivery": on_delivery,
        } | overrides
        self.producer = make_producer(settings, **conf)
        self.sent = 0
        self._since_poll = 0

    @property
    def failed(self) -> int:
        return self._failures[0]

    def send(self, topic: str, key: str, name: str, record: dict[str, Any]) -> None:
        self.send_raw(topic, key.encode(), encode(name, record))

    def send_reports(self, topic: str, model_id: str, run_id: str, reports: list[list[dict[str, Any]]]) -> None:
        """Several steps' HealthSignals (one report per step, one signal per layer) as one HealthBatch message."""
        reports = [report for report in reports if report]
        if reports:
            self.send(topic, model_id, "HealthBatch", health_batch(model_id, run_id, reports))

    def send_raw(self, topic: str, key: bytes, value: bytes) -> None:
        while True:
            try:
                self.producer.produce(topic, value, key)
                break
            except BufferError:  # local queue full: let librdkafka drain it
                self.producer.poll(0.05)
        self.sent += 1
        self._since_poll += 1
        if self._since_poll >= 1000:
            self.poll()

    def poll(self) -> None:
        self._since_poll = 0
        self.producer.poll(0)

    def flush(self, timeout: float = 30.0) -> int:
        """Wait for delivery; returns the number of messages still undelivered."""
        return self.producer.flush(timeout)


class CommandReader:
    """Reads AdaptationCommands from the end of the commands topic, without a consumer group.

    The start offsets are captured at construction, so build it *before* publishing anything a
    controller could answer. ``keys`` limits reading to the partitions those keys hash to.
    """

    def __init__(self, settings: Settings, keys: Iterable[bytes] | None = None, timeout: float = 30.0) -> None:
        self.topic = settings.topics.commands
        self.consumer = make_consumer(settings, **{"fetch.wait.max.ms": 50})
        self.invalid = 0
        try:
            self.consumer.assign(self._end_of(None if keys is None else list(keys), timeout))
        except Exception:
            self.consumer.close()
            raise

    def _end_of(self, keys: list[bytes] | None, timeout: float) -> list[TopicPartition]:
        deadline = time.monotonic() + timeout
        while True:  # a topic created a moment ago may have no leader yet
            try:
                info = self.consumer.list_topics(self.topic, timeout=timeout).topics.get(self.topic)
                if info is None or info.error is not None or not info.partitions:
                    raise RuntimeError(f"topic {self.topic!r} is not available: {getattr(info, 'error', 'missing')}")
                count = len(info.partitions)
                wanted = sorted({partition_for(k, count) for k in keys} if keys is not None else info.partitions)
                return [TopicPartition(self.topic, p, self.consumer.get_watermark_offsets(
                    TopicPartition(self.topic, p), timeout=max(deadline - time.monotonic(), 1.0))[1]) for p in wanted]
            except (KafkaException, RuntimeError) as exc:
                if time.monotonic() > deadline:
                    raise
                log.info("waiting for %s: %s", self.topic, exc)
                time.sleep(0.2)

    def poll(self, timeout: float = 0.0, max_messages: int = 1000) -> list[tuple[bytes | None, dict[str, Any]]]:
        """(key, command) pairs that arrived; undecodable messages are logged and counted."""
        out = []
        # consume(n, timeout) waits until it has n messages or the timeout passes: wait for the
        # first one only, then take what else is already here.
        messages = self.consumer.consume(num_messages=1, timeout=timeout) if timeout > 0 else []
        if max_messages > len(messages):
            messages += self.consumer.consume(num_messages=max_messages - len(messages), timeout=0)
        for message in messages:
            if message.error() is not None:
                if message.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("commands topic error: %s", message.error())
                continue
            try:
                out.append((message.key(), decode_as("AdaptationCommand", message.value())))
            except DecodeError as exc:
                self.invalid += 1
                log.warning("skipping an undecodable command at %s[%d]@%d: %s",
                            self.topic, message.partition(), message.offset(), exc)
        return out

    def close(self) -> None:
        self.consumer.close()
