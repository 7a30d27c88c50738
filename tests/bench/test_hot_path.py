"""The ingest hot-path optimisations keep behaviour: aggregates, batched outbox, codec."""

from __future__ import annotations

import asyncio
import math
import random
from collections import namedtuple

import pytest
from aiokafka.producer.message_accumulator import BatchBuilder

from models.graph import _single, merge_layer_aggregates, update_layer_aggregate
from schemas import decode, encode
from streams.outbox import Outbox
from tests.samples import SAMPLES


def _random_signal(rng: random.Random) -> dict:
    return {
        "health_score": rng.choice([rng.random(), float("nan"), 1.5, -0.2, None, "x", math.inf]),
        "timestamp_ms": rng.choice([rng.randint(0, 10_000), None, "bad"]),
        "activation_variance": rng.choice([rng.random() * 10, math.inf, -1.0, None]),
        "dead_neuron_ratio": rng.random(), "avg_correlation": rng.uniform(-2, 2), "gradient_norm": rng.random(),
        "execution_latency_ms": rng.choice([rng.random(), -3, math.nan]), "error_count": rng.choice([0, 2, -1, None]),
        "active_seeds": rng.randint(-1, 3), "total_seeds": rng.randint(0, 4),
        "seed_states": rng.choice([["DORMANT", "TRAINING"], None, []]),
        "epoch": rng.randint(0, 9), "step": rng.randint(0, 1000),
    }


def test_update_layer_aggregate_equals_merge_of_single() -> None:
    """The written-out fast path is exactly merge(agg, aggregate-of-one), out of order and dirty input included."""
    rng = random.Random(7)
    for _ in range(500):
        fast = slow = None
        for _ in range(rng.randint(1, 8)):
            signal = _random_signal(rng)
            before = None if fast is None else dict(fast)
            fast = update_layer_aggregate(fast, signal)
            slow = merge_layer_aggregates(slow, _single(signal))
            assert fast == slow and type(fast["seed_states"]) is tuple  # shared, so immutable
            if before is not None:
                assert fast is not before


TP = namedtuple("TP", "topic partition")


class FakeAio:
    """The parts of AIOKafkaProducer the outbox uses; records every submitted batch."""

    def __init__(self, batch_bytes: int) -> None:
        self.batch_bytes = batch_bytes
        self.submitted: list[tuple[str, int, int]] = []  # topic, partition, records
        self.client = self
        self._txn_manager = None

    async def _wait_on_metadata(self, topic: str) -> None:
        return None

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(self.batch_bytes, 0)

    async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int) -> asyncio.Future:
        self.submitted.append((topic, partition, batch._relative_offset))
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


class FakeFaustProducer:
    def __init__(self, batch_bytes: int = 100_000) -> None:
        self.aio = FakeAio(batch_bytes)
        self.single: list[tuple] = []

    def _ensure_producer(self) -> FakeAio:
        return self.aio

    def key_partition(self, topic: str, key: bytes) -> TP:
        return TP(topic, sum(key) % 3)

    async def send(self, topic, key, value, partition, timestamp, headers):  # type: ignore[no-untyped-def]
        self.single.append((topic, key, partition))
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def test_outbox_batches_per_topic_partition_and_sends_on_flush() -> None:
    async def run() -> tuple[FakeFaustProducer, int]:
        producer = FakeFaustProducer()
        outbox = Outbox(producer)
        for i in range(30):
            await outbox.send("exp", f"m-{i % 5}".encode(), b"v" * 50, [("tamiyo.type", b"HealthSignal")])
        await outbox.send("dead", None, b"no key")  # unkeyed: sent one by one, partition left to the producer
        assert producer.aio.submitted == []  # nothing leaves before flush
        return producer, await outbox.flush()

    producer, awaited = asyncio.run(run())
    partitions = {sum(f"m-{i}".encode()) % 3 for i in range(5)}
    assert sorted((t, p) for t, p, _ in producer.aio.submitted) == sorted(("exp", p) for p in partitions)
    assert sum(n for _, _, n in producer.aio.submitted) == 30
    assert producer.single == [("dead", None, None)]
    assert awaited == len(partitions) + 1


def test_outbox_starts_a_new_batch_when_one_is_full() -> None:
    async def run() -> FakeFaustProducer:
        producer = FakeFaustProducer(batch_bytes=300)
        outbox = Outbox(producer)
        for _ in range(20):
            await outbox.send("exp", b"same-key", b"x" * 100)
        await outbox.flush()
        return producer

    producer = asyncio.run(run())
    assert len(producer.aio.submitted) > 1
    assert sum(n for _, _, n in producer.aio.submitted) == 20
    assert len({(t, p) for t, p, _ in producer.aio.submitted}) == 1


def test_outbox_without_a_faust_producer_sends_one_by_one() -> None:
    class Plain:
        def __init__(self) -> None:
            self.sent = 0

        async def send(self, topic, key, value, partition, timestamp, headers):  # type: ignore[no-untyped-def]
            self.sent += 1
            future = asyncio.get_running_loop().create_future()
            future.set_result(None)
            return future

    async def run() -> tuple[Plain, int]:
        plain = Plain()
        outbox = Outbox(plain)
        for _ in range(3):
            await outbox.send("t", b"k", b"v")
        return plain, await outbox.flush()

    plain, awaited = asyncio.run(run())
    assert plain.sent == 3 and awaited == 3


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_codec_round_trip_on_the_fast_path(name: str) -> None:
    data = encode(name, SAMPLES[name])
    assert decode(data).value == SAMPLES[name]
    assert decode(data).name == name
