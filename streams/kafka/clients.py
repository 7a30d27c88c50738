"""confluent-kafka client construction from Settings (security settings included)."""

from __future__ import annotations

from typing import Any

from confluent_kafka import Consumer, Producer

from tamiyo.config import Settings


def base_config(settings: Settings) -> dict[str, Any]:
    if not settings.bootstrap_servers:
        raise ValueError("no Kafka bootstrap servers: set KAFKA_BOOTSTRAP_SERVERS or start the embedded broker")
    return {"bootstrap.servers": settings.bootstrap_servers, **settings.security.confluent()}


def make_producer(settings: Settings, **overrides: Any) -> Producer:
    """An idempotent, acks=all producer; keyed messages keep per-model order."""
    conf = base_config(settings) | {
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        # Java-compatible partitioner: same key → same partition as Faust/aiokafka producers.
        "partitioner": "murmur2_random",
        "message.max.bytes": max(settings.max_message_bytes * 2, 1_048_576),
    }
    conf.update(overrides)
    return Producer(conf)


def make_consumer(settings: Settings, group_id: str | None = None, **overrides: Any) -> Consumer:
    """A consumer; without ``group_id`` it is meant for ``assign()`` (no group, no commits)."""
    conf = base_config(settings) | {
        "group.id": group_id or "tamiyo-unassigned",
        "enable.auto.commit": group_id is not None,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
    }
    conf.update(overrides)
    return Consumer(conf)
