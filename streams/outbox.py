"""Batched sends through the Faust producer: enqueue fast, await every delivery before acking input.

With Faust's aiokafka producer, messages are appended to one record batch per (topic, partition)
and each full batch is handed to aiokafka as a unit (``create_batch``/``send_batch``): no future,
no accumulator lookup and no produce request per message. The partition is the one aiokafka's
default (murmur2, Java-compatible) partitioner picks for the key, so keyed order is as with
``send``. Messages without a key, and producers that are not Faust's aiokafka producer, go
through ``producer.send`` one by one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable

log = logging.getLogger(__name__)

_PARTITION_CACHE_MAX = 200_000


class Outbox:
    """Collects the messages and delivery futures of one input batch; ``flush`` sends and waits.

    Awaiting delivery before the batch's input offsets are acked is what makes processing
    at-least-once: a crash can repeat output, never lose it. Nothing is guaranteed to be on its
    way before ``flush``: an outbox that is dropped without a flush sends (at most) part of it.
    """

    def __init__(self, producer: Any) -> None:
        self._producer = producer
        self._pending: list[Awaitable[Any]] = []
        self._builders: dict[tuple[str, int], Any] = {}
        self._aio = _aiokafka_producer(producer)

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        if self._aio is None or not key:
            future = await self._producer.send(topic, key, value, None, None, headers)
            self._pending.append(future)
            return
        partition = _partitions.get((id(self._producer), topic, key))
        if partition is None:
            await self._aio.client._wait_on_metadata(topic)  # what send() does first, too
            partition = _partition_of(self._producer, topic, key)
        tp = (topic, partition)
        builder = self._builders.get(tp)
        if builder is None:
            builder = self._builders[tp] = self._aio.create_batch()
        if builder.append(timestamp=None, key=key, value=value, headers=headers or []) is None:
            # Full: hand it over and start the next one (an empty batch takes any message that fits
            # a request, like ``send`` would).
            await self._submit(tp, builder)
            builder = self._builders[tp] = self._aio.create_batch()
            if builder.append(timestamp=None, key=key, value=value, headers=headers or []) is None:
                del self._builders[tp]
                future = await self._producer.send(topic, key, value, partition, None, headers)
                self._pending.append(future)

    async def _submit(self, tp: tuple[str, int], builder: Any) -> None:
        self._pending.append(await self._aio.send_batch(builder, tp[0], partition=tp[1]))

    async def flush(self) -> int:
        """Send what is queued and wait for every delivery; returns how many sends were awaited
        (one per record batch on the batched path, one per message otherwise)."""
        builders, self._builders = self._builders, {}
        for tp, builder in builders.items():
            await self._submit(tp, builder)
        pending, self._pending = self._pending, []
        if pending:
            await asyncio.gather(*pending)
        return len(pending)


def _aiokafka_producer(producer: Any) -> Any | None:
    """The AIOKafkaProducer inside Faust's producer, when it is one and has been started."""
    ensure = getattr(producer, "_ensure_producer", None)
    if ensure is None or not hasattr(producer, "key_partition"):
        return None
    try:
        aio = ensure()
    except Exception:  # not started yet
        return None
    if not (hasattr(aio, "create_batch") and hasattr(aio, "send_batch")):
        return None
    if getattr(getattr(aio, "_txn_manager", None), "transactional_id", None) is not None:
        return None  # transactional producers must go through send()
    return aio


_partitions: dict[tuple[int, str, bytes], int] = {}


def _partition_of(producer: Any, topic: str, key: bytes) -> int:
    """aiokafka's partition for ``key`` (cached: the murmur2 partitioner is pure Python)."""
    cache_key = (id(producer), topic, key)
    partition = _partitions.get(cache_key)
    if partition is None:
        if len(_partitions) >= _PARTITION_CACHE_MAX:
            _partitions.clear()
        partition = _partitions[cache_key] = producer.key_partition(topic, key).partition
    return partition
