"""A real worker folds a HealthBatch (by columns) exactly as the same signals sent one by one,
and decides an epoch only once its last report (EpochOutcome.last_report_step) is folded."""

from __future__ import annotations

import time

import numpy as np
import pytest

from schemas import decode
from schemas.health_batch import health_batch
from streams.archive import TYPE_HEADER
from streams.kafka.reader import header
from tests.samples import SAMPLES
from tests.streams.kafka_io import TopicCollector, produce_records
from tests.streams.test_worker_kafka import decisions_in, outcome, topology

pytestmark = pytest.mark.kafka

LAYERS = 4


def reports(model_id: str, epoch: int) -> list[list[dict]]:
    """Three reports of every layer, a second apart, with health drifting differently per layer."""
    rng = np.random.default_rng(7)  # the same values for every model
    start = int(time.time() * 1000) - 3000
    out = []
    for r in range(3):
        out.append([dict(SAMPLES["HealthSignal"], model_id=model_id, layer_name=f"layers.{i}", epoch=epoch,
                         step=100 + r * 20, timestamp_ms=start + r * 1000, total_seeds=2, active_seeds=0,
                         seed_states=["DORMANT", "DORMANT"], error_count=int(rng.integers(0, 3)),
                         health_score=float(np.clip(0.9 - 0.25 * r * (i == 2) + 0.05 * rng.normal(), 0, 1)),
                         activation_variance=float(rng.random()), gradient_norm=float(rng.random()),
                         execution_latency_ms=float(rng.random()), avg_correlation=float(rng.uniform(-1, 1)))
                    for i in range(LAYERS)])
    return out


def test_a_batch_and_the_same_signals_one_by_one_give_the_same_decision_input(topics_ready, start_worker) -> None:
    settings = topics_ready
    topics = settings.topics
    worker = start_worker(TAMIYO_EPSILON="0.0", TAMIYO_SIGNAL_WAIT_SECONDS="15")
    experience = TopicCollector(settings, topics.experience)
    deadletter = TopicCollector(settings, topics.deadletter)
    produce_records(settings, topics.topology, "ModelTopology", [topology(m, LAYERS) for m in ("m-rows", "m-cols")])
    time.sleep(0.5)
    first, *rest = reports("m-rows", epoch=1)
    produce_records(settings, topics.health, "HealthSignal", first)
    produce_records(settings, topics.health, "HealthBatch", [health_batch("m-cols", "run-1", reports("m-cols", 1))])
    # A batch with one bad item is dead-lettered whole, with the item named; nothing of it is folded.
    bad = health_batch("m-cols", "run-1", reports("m-cols", 1))
    bad["dead_neuron_ratio"][5] = 1.5
    produce_records(settings, topics.health, "HealthBatch", [bad])
    # The outcomes name step 140, the epoch's last report: m-rows has only step 100 folded when its
    # outcome arrives, so the worker must wait for the rest (deciding now would see one report of three).
    produce_records(settings, topics.outcomes, "EpochOutcome",
                    [dict(outcome(m, 1), last_report_step=140) for m in ("m-rows", "m-cols")])
    experience.wait_for(lambda ms: len(decisions_in(ms)) >= 1, timeout=90, alive=worker.alive)
    time.sleep(1.0)  # the worker is running and has read both outcomes
    produce_records(settings, topics.health, "HealthSignal", [signal for report in rest for signal in report])

    experience.wait_for(lambda ms: len(decisions_in(ms)) >= 2, timeout=90, alive=worker.alive)
    by_model = {d["model_id"]: d for d in decisions_in(experience.messages)}
    assert by_model.keys() == {"m-rows", "m-cols"}
    rows_features = np.asarray(by_model["m-rows"]["node_features"])
    cols_features = np.asarray(by_model["m-cols"]["node_features"])
    assert by_model["m-rows"]["feature_names"] == by_model["m-cols"]["feature_names"]
    names = by_model["m-cols"]["feature_names"]
    assert rows_features[:, names.index("has_data")].tolist() == [1.0] * LAYERS
    assert cols_features == pytest.approx(rows_features, abs=1e-9)
    # The trend is there (layers.2 falls over the three reports), so the comparison is not of constants.
    assert cols_features[2, names.index("health_trend")] < -0.3
    assert by_model["m-rows"]["action"] == by_model["m-cols"]["action"]

    letter = decode(deadletter.wait_for(lambda ms: len(ms) >= 1, timeout=60, alive=worker.alive)[0].value()).value
    assert letter["error_kind"] == "validation"
    assert "report 1 layer 'layers.1': dead_neuron_ratio=1.5 is outside [0.0, 1.0]" in letter["reason"]
    kinds = [header(m, TYPE_HEADER) for m in experience.messages]
    assert kinds.count("HealthBatch") == 1 and kinds.count("HealthSignal") == 3 * LAYERS
    assert worker.alive()
