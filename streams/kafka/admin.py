"""Topic creation: idempotent, with the partition count from Settings."""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from streams.kafka.clients import base_config
from tamiyo.config import Settings

log = logging.getLogger(__name__)


def ensure_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create every Tamiyo topic that does not exist yet; returns the names created.

    The topology topic is compacted (one ModelTopology per model key); the rest use delete retention.
    """
    admin = AdminClient(base_config(settings))
    topics = settings.topics
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = []
    for name in topics.all():
        if name in existing:
            continue
        config = {"cleanup.policy": "compact"} if name == topics.topology else {}
        # The experience and dead-letter topics keep original message bytes plus headers.
        config["max.message.bytes"] = str(max(settings.max_message_bytes * 2, 1_048_576))
        wanted.append(NewTopic(name, num_partitions=settings.partitions, replication_factor=1, config=config))
    created = []
    for name, future in admin.create_topics(wanted, operation_timeout=timeout).items() if wanted else []:
        try:
            future.result(timeout)
            created.append(name)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" in str(exc):
                continue
            raise
    if created:
        log.info("created topics %s", created)
        wait_for_leaders(admin, created, timeout)
    return created


def wait_for_leaders(admin: AdminClient, names: list[str], timeout: float = 30.0) -> None:
    """Block until every partition of ``names`` has a leader (new topics need a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        metadata = admin.list_topics(timeout=timeout).topics
        ready = all(name in metadata and metadata[name].error is None and metadata[name].partitions
                    and all(p.leader >= 0 for p in metadata[name].partitions.values()) for name in names)
        if ready:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics {names} have no leader after {timeout}s")
        time.sleep(0.1)
