"""A real training host and a real worker together: commands flow back, everything is archived."""

from __future__ import annotations

import threading
import time
from collections import Counter

import numpy as np
import pytest

from hosts.host import run_host
from schemas import decode
from schemas.health_batch import batch_size
from streams.archive import TYPE_HEADER
from streams.kafka.reader import header, read_topic

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_host_applies_commands_and_every_message_is_archived(topics_ready, start_worker) -> None:
    settings = topics_ready
    topics = settings.topics
    # Explore fully, so the untrained controller surely adapts something within a few epochs.
    worker = start_worker(TAMIYO_EPSILON="1.0", TAMIYO_COOLDOWN_EPOCHS="1")
    # The host waits 20 s per epoch for a decision: a worker still importing torch after that would
    # meet epochs 0 and 1 together and decide only the newer (measured once under load).
    worker.wait_ready()
    result = {}
    host = threading.Thread(target=lambda: result.update(stats=run_host(
        settings, model_id="host-it", epochs=6, seed=3, decision_wait_s=20.0)))
    host.start()
    host.join(timeout=240)
    assert not host.is_alive(), "the host did not finish"
    stats = result["stats"]
    assert stats.epochs == 6
    assert stats.commands_applied >= 1, stats

    produced: Counter = Counter()
    signals = 0
    for topic in (topics.topology, topics.health, topics.outcomes, topics.commands):
        for message in read_topic(settings, topic, idle_timeout=2.0):
            decoded = decode(message.value())
            produced[decoded.name] += 1
            if decoded.name == "HealthBatch":
                signals += batch_size(decoded.value)

    def archived() -> tuple[Counter, list[dict]]:
        kinds: Counter = Counter()
        decisions = []
        for message in read_topic(settings, topics.experience, idle_timeout=2.0):
            kinds[header(message, TYPE_HEADER)] += 1
            if header(message, TYPE_HEADER) == "DecisionRecord":
                decisions.append(decode(message.value()).value)
        return kinds, decisions

    # The worker may still be catching up: wait (bounded) until it has archived the whole run.
    deadline = time.monotonic() + 60
    kinds, decisions = archived()
    while time.monotonic() < deadline and (any(kinds[n] < c for n, c in produced.items())
                                           or len({d["epoch"] for d in decisions}) < 6):
        time.sleep(1.0)
        kinds, decisions = archived()
    assert worker.alive()
    assert produced["HealthBatch"] == stats.health_messages and signals == stats.health_signals > 0
    assert produced["ModelTopology"] == stats.topologies
    # Every message of every topic is on the experience topic (at least once), plus one decision per epoch.
    for name, count in produced.items():
        assert kinds[name] >= count, (name, kinds[name], count)
    assert len({d["epoch"] for d in decisions}) == 6
    for record in decisions:
        distribution = np.asarray(record["distribution"])
        assert distribution.sum() == pytest.approx(1.0)
        assert record["propensity"] == pytest.approx(distribution[record["action_index"]])
    assert produced["CommandOutcome"] >= stats.commands_applied
    assert list(read_topic(settings, topics.deadletter, idle_timeout=1.0)) == []
