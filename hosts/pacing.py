"""Pacing: a simulated fleet holds back while the workers are behind on its input.

A fleet can produce faster than a worker can fold and decide, most of all on a small machine that
also trains real hosts. A worker that falls behind reads a run's signals after the run's next
topology (the topology topic is small and stays caught up) and drops them as stale, with their
epochs' decisions: measured in ``make demo`` on a 2-core machine where the policy ran 4x slower
than on the development machine, 250k-400k of 700k-800k signals were stale and the learning step
had too few decisions to promote anything. ``WorkerLag`` reads the worker group's committed offsets
(Faust commits every second) against the high watermarks of the health and outcomes topics, without
joining the group.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from confluent_kafka import Consumer, KafkaException, TopicPartition

from streams.kafka.clients import make_consumer
from streams.kafka.reader import partition_lag
from tamiyo.config import Settings

log = logging.getLogger(__name__)


class WorkerLag:
    """Messages of the health and outcomes topics the worker group has not committed yet."""

    def __init__(self, settings: Settings, timeout_s: float = 2.0) -> None:
        topics = settings.topics
        self.timeout_s = timeout_s
        self.partitions = [TopicPartition(topic, p) for topic in (topics.health, topics.outcomes)
                           for p in range(settings.partitions)]
        # Never subscribes: asking for committed offsets does not join the group or commit.
        self.consumer: Consumer = make_consumer(settings, group_id=settings.worker_group,
                                                **{"enable.auto.commit": False})

    def messages(self) -> int | None:
        """Uncommitted messages over both topics; None when the broker did not answer in time."""
        try:
            committed = self.consumer.committed(self.partitions, timeout=self.timeout_s)
            lag = 0
            for tp in committed:
                lag += partition_lag(tp.offset, *self.consumer.get_watermark_offsets(tp, timeout=self.timeout_s))
            return lag
        except KafkaException as exc:
            log.debug("worker lag unknown: %s", exc)
            return None

    def close(self) -> None:
        self.consumer.close()


def hold_back(lag: Callable[[], int | None], max_lag: int, max_wait_s: float, idle: Callable[[float], None],
              clock: Callable[[], float] = time.monotonic) -> float:
    """Call ``idle(step)`` while ``lag()`` is above ``max_lag``, for at most ``max_wait_s``.

    Returns the seconds held back. The cap keeps a fleet moving when the lag cannot fall (a worker
    holding a commit for an outcome that waits, or no worker at all); an unknown lag never holds.
    """
    started = clock()
    while True:
        current = lag()
        waited = clock() - started
        if current is None or current <= max_lag or waited >= max_wait_s:
            return waited
        idle(min(0.2, max_wait_s - waited))
