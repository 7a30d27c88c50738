"""The simulated fleet on a real broker: decodable records, commands applied exactly once."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from hosts.fleet import FleetStats, run_fleet
from schemas import encode
from streams.kafka.clients import make_producer
from tests.hosts.tail import Tail

pytestmark = pytest.mark.kafka


def test_fleet_publishes_and_applies_each_command_once(topics_ready) -> None:
    settings = topics_ready
    topics = settings.topics
    stop = threading.Event()
    result: dict[str, FleetStats] = {}
    fleet = threading.Thread(target=lambda: result.setdefault("stats", run_fleet(
        settings, models=5, duration_s=60, epoch_interval_s=0.2, seed=3, stop_event=stop, epochs_per_run=100)))
    fleet.start()
    tail = Tail(settings, [topics.topology, topics.health, topics.outcomes])
    try:
        target = "sim-3-0002"
        outcome = tail.wait_for(lambda r: r[1] == "EpochOutcome" and r[2]["model_id"] == target)[0][2]
        decision = f"d-{uuid.uuid4().hex}"
        command = {"decision_id": decision, "model_id": target, "epoch": outcome["epoch"],
                   "timestamp_ms": int(time.time() * 1000), "action": "GERMINATE", "layer_name": "layers.0",
                   "seed_index": None, "kernel": "lowrank", "policy_version": "test", "probability": 1.0}
        producer = make_producer(settings)
        for _ in range(2):  # at-least-once delivery: the same decision twice
            producer.produce(topics.commands, encode("AdaptationCommand", command), target.encode())
            producer.flush(10)
        answers = tail.wait_for(lambda r: r[1] == "CommandOutcome" and r[2]["decision_id"] == decision, count=2)
        # An unrelated model's command is none of the fleet's business.
        elsewhere = encode("AdaptationCommand", command | {"model_id": "elsewhere"})
        producer.produce(topics.commands, elsewhere, b"elsewhere")
        producer.flush(10)
        time.sleep(0.5)
    finally:
        stop.set()
        fleet.join(30)
    assert not fleet.is_alive()
    stats = result["stats"]
    tail.pump(1.0)
    tail.close()
    assert sorted(r[2]["status"] for r in answers) == ["APPLIED", "DUPLICATE"]
    applied = next(r[2] for r in answers if r[2]["status"] == "APPLIED")
    assert applied["parameter_delta"] > 0 and applied["run_id"] == outcome["run_id"]
    assert (stats.commands_received, stats.commands_applied, stats.duplicates, stats.rejected) == (2, 1, 1, 0)
    assert {v["model_id"] for v in tail.of("ModelTopology")} == {f"sim-3-{i:04d}" for i in range(5)}
    first, changed = tail.of("ModelTopology", model_id=target)  # at start, and after the adaptation
    count = lambda t: sum(l["parameter_count"] for l in t["layers"])  # noqa: E731
    assert count(changed) - count(first) == applied["parameter_delta"]
    assert len(tail.of("HealthSignal")) == stats.health_signals > 0
    assert len(tail.of("EpochOutcome")) == stats.epochs >= 5
    assert len(tail.of("HealthBatch")) == stats.health_messages == stats.epochs  # one per model and epoch
    assert sum(len(b["epoch"]) for b in tail.of("HealthBatch")) == stats.health_reports == 2 * stats.epochs
    assert stats.messages_produced == stats.health_messages + stats.epochs + stats.topologies + 2
    assert stats.delivery_failures == 0 and tail.keys_ok
    layer0 = [v for v in tail.of("HealthSignal", model_id=target, layer_name="layers.0")]
    assert layer0[-1]["seed_states"][0] in ("GERMINATED", "TRAINING", "BLENDING")  # the seed is growing
