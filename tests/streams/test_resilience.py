"""A failed batch is retried one message at a time; only the failing message is dead-lettered."""

from __future__ import annotations

import asyncio

from schemas import decode
from streams.context import WorkerContext
from streams.intake import RawMessage
from streams.resilience import process_safely
from tamiyo.config import Settings


class Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    async def send(self, topic, key, value, partition, timestamp, headers):  # type: ignore[no-untyped-def]
        self.sent.append((topic, key, value))
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def raw(offset: int) -> RawMessage:
    return RawMessage(topic="t.health", partition=0, offset=offset, key=b"m", value=b"v%d" % offset, timestamp_ms=0)


def test_failed_batch_is_retried_singly_and_only_the_poison_message_is_dead_lettered() -> None:
    settings = Settings.from_env(bootstrap_servers="127.0.0.1:1", topic_prefix="t")
    ctx = WorkerContext(settings=settings)
    producer = Producer()
    processed: list[int] = []

    async def process(ctx, outbox, messages):  # type: ignore[no-untyped-def]
        if any(m.offset == 2 for m in messages):
            raise RuntimeError("boom")
        for m in messages:
            processed.append(m.offset)
            await outbox.send("t.experience", m.key, m.value)

    asyncio.run(process_safely(ctx, producer, process, [raw(i) for i in range(4)]))
    assert processed == [0, 1, 3]
    dead = [decode(v).value for topic, _, v in producer.sent if topic == "t.deadletter"]
    assert len(dead) == 1 and dead[0]["offset"] == 2 and dead[0]["error_kind"] == "processing_error"
    assert "RuntimeError: boom" in dead[0]["reason"]
    assert ctx.counters.dead_letters == 1


def test_a_good_batch_is_processed_once() -> None:
    settings = Settings.from_env(bootstrap_servers="127.0.0.1:1", topic_prefix="t")
    ctx = WorkerContext(settings=settings)
    producer = Producer()
    calls: list[int] = []

    async def process(ctx, outbox, messages):  # type: ignore[no-untyped-def]
        calls.append(len(messages))

    asyncio.run(process_safely(ctx, producer, process, [raw(i) for i in range(3)]))
    assert calls == [3] and producer.sent == []
