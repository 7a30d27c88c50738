"""confluent-kafka client construction from Settings (security settings included).

Building a client also sets the process's wire format from the same Settings (``use_wire_format``):
with ``TAMIYO_SCHEMA_REGISTRY_URL`` a producer's process registers the schemas and writes the
Confluent format, a consumer's process looks the ids up; without it, single-object only.
"""

from __future__ import annotations

import threading
from typing import Any

from confluent_kafka import Consumer, Producer

from schemas import codec
from tamiyo.config import SchemaRegistrySettings, Settings

_wire: tuple[SchemaRegistrySettings, bool] | None = None  # the registry in use, and whether we write
_wire_lock = threading.Lock()


def use_wire_format(settings: Settings, write: bool) -> None:
    """Point ``schemas.codec`` at ``settings.schema_registry`` (idempotent; network calls happen
    here, once, never while encoding). ``write`` registers the schemas so ``encode`` writes the
    Confluent format; raises ``schemas.registry_client.RegistryError`` when that fails."""
    global _wire
    wanted = settings.schema_registry
    with _wire_lock:
        if not wanted.url:
            if codec.confluent_ids() is not None:
                codec.use_confluent(None)
            _wire = None
            return
        if _wire is not None and _wire[0] == wanted and (_wire[1] or not write) and codec.confluent_ids() is not None:
            return
        from schemas.confluent import connect
        from schemas.registry_client import RegistryClient

        client = RegistryClient(wanted.url, wanted.user_info, wanted.timeout_s, wanted.ca_file)
        codec.use_confluent(connect(client, write, wanted.retry_s))
        _wire = (wanted, write)


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
    use_wire_format(settings, write=True)
    return Producer(conf)


# For short-lived readers of whole topics (replay, read_batches): a new client's first request went
# to its bootstrap connection, which librdkafka tears down when the broker's own connection
# replaces it, and was retried (15-28 ms before the first metadata answer, measured; 4-7 ms with
# every broker connected at once). Such a reader fetches from every partition leader anyway; a
# long-lived reader of one partition (a host's command reader) keeps sparse connections.
# At the end of a range librdkafka keeps a fetch outstanding, which the broker holds for
# fetch.wait.max.ms (default 500) and which a broker answers before the next request on that
# connection: a reused reader's next metadata or offsets request waited for it (a second read of
# the bench's 30k records with the same consumer: 300-770 ms, 59-76 ms with 10 ms).
BULK_READER: dict[str, Any] = {"enable.sparse.connections": False, "fetch.wait.max.ms": 10}


def make_consumer(settings: Settings, group_id: str | None = None, **overrides: Any) -> Consumer:
    """A consumer; without ``group_id`` it is meant for ``assign()`` (no group, no commits)."""
    conf = base_config(settings) | {
        "group.id": group_id or "tamiyo-unassigned",
        "enable.auto.commit": group_id is not None,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
    }
    if group_id is None:
        # librdkafka replaces its bootstrap connection once it learns the broker's id, and the first
        # request of a new client waits out that reconnect backoff (default 100 ms with jitter):
        # measured 55 ms before the first metadata answer, 15 ms with 10 ms. Readers are short-lived
        # (replay, status, tallies), so that wait was most of a small read; backoff still doubles
        # on failures up to reconnect.backoff.max.ms.
        conf["reconnect.backoff.ms"] = 10
    conf.update(overrides)
    use_wire_format(settings, write=False)
    return Consumer(conf)
