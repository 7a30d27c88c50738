"""A real worker process on a real broker: decisions, commands, archive, dead letters."""

from __future__ import annotations

import socket
import time
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hosts.wire import health_report
from schemas import decode, encode
from streams.archive import TYPE_HEADER
from streams.kafka.reader import header
from tests.samples import SAMPLES
from tests.streams.kafka_io import TopicCollector, produce, produce_records

pytestmark = pytest.mark.kafka


def topology(model_id: str, layers: int = 4) -> dict:
    names = [f"layers.{i}" for i in range(layers)]
    return {
        "model_id": model_id, "run_id": "run-1", "timestamp_ms": int(time.time() * 1000),
        "layers": [{"name": n, "layer_type": "KasminaLayer", "input_size": 32, "output_size": 32,
                    "parameter_count": 1056, "num_seeds": 2} for n in names],
        "edges": [{"source": a, "target": b} for a, b in zip(names, names[1:])],
    }


def signals(model_id: str, epoch: int, sick: str = "layers.2", layers: int = 4) -> list[dict]:
    now = int(time.time() * 1000)
    return [dict(SAMPLES["HealthSignal"], model_id=model_id, layer_name=f"layers.{i}", epoch=epoch,
                 timestamp_ms=now, total_seeds=2, active_seeds=0, seed_states=["DORMANT", "DORMANT"],
                 health_score=0.05 if f"layers.{i}" == sick else 0.95) for i in range(layers)]


def report(model_id: str, epoch: int) -> dict:
    """The same signals as one HealthReport."""
    return health_report(model_id, "run-1", signals(model_id, epoch))


def outcome(model_id: str, epoch: int) -> dict:
    return dict(SAMPLES["EpochOutcome"], model_id=model_id, epoch=epoch, timestamp_ms=int(time.time() * 1000))


def decisions_in(messages: list) -> list[dict]:
    return [decode(m.value()).value for m in messages if header(m, TYPE_HEADER) == "DecisionRecord"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[str, list]:
    """The worker's Prometheus metrics: family name -> samples."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def test_worker_decides_commands_archives_and_dead_letters(topics_ready, start_worker) -> None:
    settings = topics_ready
    topics = settings.topics
    port = free_port()
    # Generous signal wait: under CI load the outcome may be read well before its epoch's signals.
    worker = start_worker(TAMIYO_EPSILON="0.0", TAMIYO_SIGNAL_WAIT_SECONDS="15", TAMIYO_METRICS_PORT=str(port))
    experience = TopicCollector(settings, topics.experience)
    commands = TopicCollector(settings, topics.commands)
    deadletter = TopicCollector(settings, topics.deadletter)
    models = ["m-a", "m-b", "m-c"]
    produce_records(settings, topics.topology, "ModelTopology", [topology(m) for m in models])
    time.sleep(0.5)
    for m in models[:2]:  # one message per signal (older hosts) ...
        produce_records(settings, topics.health, "HealthSignal", signals(m, epoch=1))
    produce_records(settings, topics.health, "HealthReport", [report("m-c", epoch=1)])  # ... or one per step
    produce_records(settings, topics.outcomes, "EpochOutcome", [outcome(m, 1) for m in models])

    experience.wait_for(lambda ms: len(decisions_in(ms)) >= 3, timeout=90, alive=worker.alive)
    for record in decisions_in(experience.messages):
        distribution = np.array(record["distribution"])
        assert distribution.sum() == pytest.approx(1.0)
        assert record["propensity"] == pytest.approx(distribution[record["action_index"]])
        assert record["policy_version"] == "heuristic-v1"
        assert len(record["node_features"]) == len(record["layer_names"]) == 4
        # The heuristic adapts the sick layer (health 0.05 < 0.3); the gate lets it through.
        assert record["action"] == "GERMINATE" and record["layer_name"] == "layers.2", [
            (r["model_id"], r["epoch"], r["trigger"], r["action"]) for r in decisions_in(experience.messages)]
    sent = commands.wait_for(lambda ms: len(ms) >= 3, timeout=30)
    command_ids = {decode(m.value()).value["decision_id"] for m in sent}
    assert command_ids == {r["decision_id"] for r in decisions_in(experience.messages)}
    assert {m.key() for m in sent} == {m.encode() for m in models}

    # Garbage on the health topic is dead-lettered with its origin; the next valid input still works.
    produce(settings, topics.health, [(b"m-a", b"\x00garbage\xff" * 3)])
    # A report naming a layer the topology lacks is dead-lettered whole (none of its signals is folded).
    unknown = report("m-a", epoch=2)
    unknown["signals"][3]["layer_name"] = "layers.9"
    produce_records(settings, topics.health, "HealthReport", [unknown])
    produce_records(settings, topics.health, "HealthReport", [report("m-a", epoch=2)])
    produce_records(settings, topics.outcomes, "EpochOutcome", [outcome("m-a", 2)])
    dead = deadletter.wait_for(lambda ms: len(ms) >= 2, timeout=60, alive=worker.alive)
    letter, layer_letter = (decode(m.value()).value for m in sorted(dead, key=lambda m: m.offset()))
    assert layer_letter["error_kind"] == "unknown_layer" and "'layers.9'" in layer_letter["reason"]
    assert letter["source_topic"] == topics.health
    assert letter["error_kind"] == "bad_header" and "c301" in letter["reason"]
    assert letter["value"] == b"\x00garbage\xff" * 3 and letter["offset"] >= 0
    experience.wait_for(lambda ms: len([d for d in decisions_in(ms) if d["epoch"] == 2]) == 1, timeout=60,
                        alive=worker.alive)
    # Cooldown: m-a adapted layers.2 at epoch 1, so at epoch 2 that layer is not legal.
    second = [d for d in decisions_in(experience.messages) if d["epoch"] == 2][0]
    assert second["layer_name"] != "layers.2"

    # Everything that went in is on the experience topic, plus the commands and decisions.
    experience.wait_for(lambda ms: sum(header(m, TYPE_HEADER) == "AdaptationCommand" for m in ms) >= len(sent),
                        timeout=30)
    kinds = [header(m, TYPE_HEADER) for m in experience.messages]
    assert kinds.count("ModelTopology") == 3
    assert kinds.count("HealthSignal") == 2 * 4
    assert kinds.count("HealthReport") == 2  # m-c at epoch 1, m-a at epoch 2 (not the dead-lettered one)
    assert kinds.count("EpochOutcome") == 4
    assert worker.alive()

    # Live metrics on TAMIYO_METRICS_PORT: counts by kind, lag of the input topics (refreshed every
    # 5 s, with the counters), the serving version, decision batch times, no commit held back.
    def caught_up(metrics: dict[str, list]) -> bool:
        events = {s.labels["kind"]: s.value for s in metrics.get("tamiyo_events", []) if s.name.endswith("_total")}
        lag = {s.labels["topic"]: s.value for s in metrics.get("tamiyo_consumer_lag", [])}
        return (events.get("decisions", 0) >= 4 and events.get("dead_letters", 0) >= 2
                and lag.get(topics.health) == 0 and lag.get(topics.outcomes) == 0)

    deadline = time.monotonic() + 60
    while not caught_up(metrics := scrape(port)) and time.monotonic() < deadline:
        time.sleep(1.0)
    assert caught_up(metrics), metrics
    events = {s.labels["kind"]: s.value for s in metrics["tamiyo_events"] if s.name.endswith("_total")}
    assert events["decisions"] == 4 and events["commands_sent"] >= 3 and events["health_signals"] == 4 * 4
    assert metrics["tamiyo_policy_info"][0].labels["version"] == "heuristic-v1"
    assert [s.value for s in metrics["tamiyo_decision_batch_seconds"] if s.name.endswith("_count")][0] >= 1
    # One end-to-end latency per outcome decided: from its Kafka timestamp (this test's clock) to delivery.
    latency = {s.name.rsplit("_", 1)[1]: s.value for s in metrics["tamiyo_decision_latency_seconds"]
               if s.name.endswith(("_count", "_sum"))}
    assert latency["count"] == 4 and 0 < latency["sum"] < 4 * 120, latency
    assert [s.value for s in metrics["tamiyo_commit_holds"]] == [0.0]

    # m-b starts run-2; then run-1's last report and outcome arrive late (health, outcomes and
    # topology are separate topics). They are archived, neither folded into run-2's graph nor
    # decided nor left waiting for a topology that will never come; run-2 is decided as usual.
    produce_records(settings, topics.topology, "ModelTopology", [dict(topology("m-b"), run_id="run-2")])
    experience.wait_for(lambda ms: sum(header(m, TYPE_HEADER) == "ModelTopology" for m in ms) == 4, timeout=30)
    produce_records(settings, topics.health, "HealthReport", [report("m-b", epoch=2)])
    produce_records(settings, topics.outcomes, "EpochOutcome", [outcome("m-b", 2)])
    run2 = [dict(s, run_id="run-2") for s in signals("m-b", epoch=1, sick="layers.1")]
    produce_records(settings, topics.health, "HealthReport", [health_report("m-b", "run-2", run2)])
    produce_records(settings, topics.outcomes, "EpochOutcome", [dict(outcome("m-b", 1), run_id="run-2")])
    experience.wait_for(lambda ms: any(d["run_id"] == "run-2" for d in decisions_in(ms)), timeout=60,
                        alive=worker.alive)
    experience.wait_for(lambda ms: sum(header(m, TYPE_HEADER) == "HealthReport" for m in ms) == 4, timeout=30)
    late = [decode(m.value()).value for m in experience.messages if header(m, TYPE_HEADER) == "HealthReport"]
    assert ("m-b", "run-1") in {(r["model_id"], r["run_id"]) for r in late}
    run2_decision = [d for d in decisions_in(experience.messages) if d["run_id"] == "run-2"]
    assert len(run2_decision) == 1 and run2_decision[0]["layer_name"] == "layers.1"  # run-2's sick layer
    assert not [d for d in decisions_in(experience.messages) if d["model_id"] == "m-b" and d["epoch"] == 2]
    # run-1's topology read again (a re-read after a restart) does not replace run-2's: run-2 goes on.
    produce_records(settings, topics.topology, "ModelTopology", [topology("m-b")])
    experience.wait_for(lambda ms: sum(header(m, TYPE_HEADER) == "ModelTopology" for m in ms) == 5, timeout=30)
    produce_records(settings, topics.health, "HealthReport",
                    [health_report("m-b", "run-2", [dict(s, run_id="run-2") for s in signals("m-b", epoch=2)])])
    produce_records(settings, topics.outcomes, "EpochOutcome", [dict(outcome("m-b", 2), run_id="run-2")])
    experience.wait_for(lambda ms: len([d for d in decisions_in(ms) if d["run_id"] == "run-2"]) == 2, timeout=60,
                        alive=worker.alive)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        events = {s.labels["kind"]: s.value for s in scrape(port)["tamiyo_events"] if s.name.endswith("_total")}
        if events.get("stale_outcomes") == 1 and events.get("stale_topologies") == 1:
            break
        time.sleep(1.0)
    assert events["stale_signals"] == 4 and events["stale_outcomes"] == 1 and events["stale_topologies"] == 1
    assert events["dead_letters"] == 2
    assert len(deadletter.messages) == 2
    for collector in (experience, commands, deadletter):
        collector.close()
