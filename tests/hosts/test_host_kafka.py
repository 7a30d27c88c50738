"""The real digits host on a real broker: trains, publishes decodable records, applies a command."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from hosts.host import HostStats, run_host
from hosts.partitioner import partition_for
from models.kernels import kernel_parameter_count
from schemas import encode
from streams.kafka.clients import make_producer
from tests.hosts.tail import Tail

pytestmark = pytest.mark.kafka


def test_host_trains_and_applies_a_germinate_command(topics_ready) -> None:
    settings = topics_ready
    topics = settings.topics
    model_id = f"host-{uuid.uuid4().hex[:6]}"
    result: dict[str, HostStats] = {}
    host = threading.Thread(target=lambda: result.setdefault("stats", run_host(
        settings, model_id, epochs=2, seed=1, hidden=(32, 32), report_every_steps=10, decision_wait_s=15.0)))
    started = time.monotonic()
    host.start()
    tail = Tail(settings, [topics.topology, topics.health, topics.outcomes])
    try:
        first = tail.wait_for(lambda r: r[1] == "EpochOutcome" and r[2]["model_id"] == model_id)[0][2]
        decision = f"d-{uuid.uuid4().hex}"
        command = {"decision_id": decision, "model_id": model_id, "epoch": first["epoch"],
                   "timestamp_ms": int(time.time() * 1000), "action": "GERMINATE", "layer_name": "layers.1",
                   "seed_index": None, "kernel": "mlp_small", "policy_version": "test", "probability": 1.0}
        delivered: list[int] = []
        producer = make_producer(settings)
        for _ in range(2):
            producer.produce(topics.commands, encode("AdaptationCommand", command), model_id.encode(),
                             on_delivery=lambda err, msg: delivered.append(msg.partition()))
        producer.flush(10)
    finally:
        host.join(60)
    assert not host.is_alive()
    elapsed = time.monotonic() - started
    tail.pump(1.0)
    tail.close()
    stats = result["stats"]
    assert delivered == [partition_for(model_id.encode(), settings.partitions)] * 2  # same as librdkafka
    assert first["epoch"] == 0 and not first["final"]
    epochs = tail.of("EpochOutcome", model_id=model_id)
    assert [e["epoch"] for e in epochs] == [0, 1] and epochs[-1]["final"]
    assert epochs[-1]["val_accuracy"] > 0.5 and stats.epochs == 2
    answers = tail.of("CommandOutcome", decision_id=decision)
    assert [a["status"] for a in answers].count("APPLIED") == 1 and stats.commands_applied == 1
    assert all(a["status"] in ("APPLIED", "DUPLICATE") for a in answers)
    delta = kernel_parameter_count("mlp_small", 32, 32)
    assert answers[0]["parameter_delta"] == delta and answers[0]["run_id"] == first["run_id"]
    topologies = tail.of("ModelTopology", model_id=model_id)
    assert len(topologies) == 2  # at start and after the adaptation
    count = lambda t: sum(l["parameter_count"] for l in t["layers"])  # noqa: E731
    assert count(topologies[1]) - count(topologies[0]) == delta
    assert epochs[-1]["parameter_count"] == count(topologies[1])
    signals = tail.of("HealthSignal", model_id=model_id)
    assert len(signals) == stats.health_signals > 0
    assert {s["layer_name"] for s in signals} == {"layers.0", "layers.1", "layers.2"}
    assert all(0.0 <= s["health_score"] <= 1.0 for s in signals)
    # Reports travel in HealthBatches of at most reports_per_message (8), and no batch spans two epochs
    # (each epoch's reports are sent before its outcome).
    batches = tail.of("HealthBatch", model_id=model_id)
    assert len(batches) == stats.health_messages and sum(len(b["epoch"]) for b in batches) == stats.health_reports
    assert all(1 <= len(b["epoch"]) <= 8 and len(set(b["epoch"])) == 1 for b in batches)
    # Each outcome names its epoch's last report step: the controller decides once that is folded.
    for e in epochs:
        steps = [step for b in batches if b["epoch"][0] == e["epoch"] for step in b["step"]]
        assert steps and e["last_report_step"] == max(steps)
    assert stats.health_messages < stats.health_reports  # batched, not one message per report
    assert any(s["seed_states"][0] == "GERMINATED" for s in signals if s["layer_name"] == "layers.1")
    assert tail.keys_ok and elapsed < 20
