"""Fleet pacing: the workers' uncommitted input on a real broker, and the hold-back loop."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import TopicPartition

from hosts.pacing import WorkerLag, hold_back
from streams.kafka.clients import make_consumer
from streams.kafka.reader import partition_lag
from tests.samples import SAMPLES
from tests.streams.kafka_io import produce_records


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def idle(self, seconds: float) -> None:
        self.now += seconds


def test_partition_lag_counts_from_the_commit_or_from_the_oldest_retained_record() -> None:
    assert partition_lag(7, 0, 10) == 3
    assert partition_lag(-1001, 4, 10) == 6  # never committed: everything retained (from low) is ahead
    assert partition_lag(12, 0, 10) == 0  # a commit past the end (a truncated topic) is no negative lag


def test_hold_back_waits_while_the_lag_is_high_and_never_past_its_cap() -> None:
    clock = _Clock()
    lags = iter([900, 700, 400, 100])
    assert hold_back(lambda: next(lags), 500, 5.0, clock.idle, clock) == pytest.approx(0.4)
    clock = _Clock()
    assert hold_back(lambda: 10_000, 500, 1.0, clock.idle, clock) == pytest.approx(1.0)  # capped
    clock = _Clock()
    assert hold_back(lambda: None, 500, 5.0, clock.idle, clock) == 0.0  # unknown: never holds


def known(lag: WorkerLag, timeout_s: float = 30.0) -> int:
    """The lag, once the broker answers: a fresh broker's group coordinator is still loading at first
    (the fleet then just does not hold back)."""
    deadline = time.monotonic() + timeout_s
    while (value := lag.messages()) is None:
        assert time.monotonic() < deadline, "the broker never answered for the worker group's offsets"
        time.sleep(0.2)
    return value


@pytest.mark.kafka
def test_worker_lag_counts_what_the_worker_group_has_not_committed(topics_ready) -> None:
    settings = topics_ready
    topics = settings.topics
    lag = WorkerLag(settings)
    try:
        assert known(lag) == 0
        produce_records(settings, topics.health, "HealthSignal", [SAMPLES["HealthSignal"]] * 7)
        produce_records(settings, topics.outcomes, "EpochOutcome", [SAMPLES["EpochOutcome"]] * 3)
        assert known(lag) == 10  # nothing committed: all of it
        # The worker group commits the health topic's offsets: only the outcomes are left.
        group = make_consumer(settings, group_id=settings.worker_group, **{"enable.auto.commit": False})
        try:
            ends = [TopicPartition(topics.health, p, group.get_watermark_offsets(
                TopicPartition(topics.health, p), timeout=10)[1]) for p in range(settings.partitions)]
            group.commit(offsets=ends, asynchronous=False)
        finally:
            group.close()
        assert known(lag) == 3
    finally:
        lag.close()
