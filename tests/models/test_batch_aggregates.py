"""Folding a HealthBatch by columns equals folding its signals one by one (models.batch_aggregates)."""

from __future__ import annotations

import numpy as np
import pytest

from models.batch_aggregates import batch_layer_aggregates, fold_batch
from models.graph import merge_layer_aggregates, update_layer_aggregate
from schemas.health_batch import batch_signals, health_batch
from tests.samples import SAMPLES

STATES = ["DORMANT", "GERMINATED", "TRAINING", "BLENDING", "FOSSILIZED", "CULLED"]


def random_reports(rng: np.random.Generator, reports: int, layers: int, ts_ties: bool = False) -> list[list[dict]]:
    out = []
    for r in range(reports):
        ts = 1_700_000_000_000 + int(rng.integers(0, 3) if ts_ties else rng.integers(0, 100_000))
        report = []
        for j in range(layers):
            seeds = int(rng.integers(0, 4))
            report.append({
                "model_id": "m-1", "run_id": "run-1", "layer_name": f"layers.{j}", "epoch": int(rng.integers(0, 5)),
                "step": r * 10, "timestamp_ms": ts, "health_score": float(rng.random()),
                "activation_variance": float(rng.random() * 3), "dead_neuron_ratio": float(rng.random()),
                "avg_correlation": float(rng.uniform(-1, 1)), "gradient_norm": float(rng.random()),
                "execution_latency_ms": float(rng.random() * 5), "error_count": int(rng.integers(0, 3)),
                "active_seeds": int(rng.integers(0, seeds + 1)), "total_seeds": seeds,
                "seed_states": [STATES[int(k)] for k in rng.integers(0, 6, seeds)]})
        for s in report:
            s["epoch"] = report[0]["epoch"]
        out.append(report)
    return out


def fold_one_by_one(signals: list[dict], start: dict[str, dict] | None = None) -> dict[str, dict]:
    layers = {k: dict(v) for k, v in (start or {}).items()}
    for s in signals:
        layers[s["layer_name"]] = update_layer_aggregate(layers.get(s["layer_name"]), s)
    return layers


def assert_same(got: dict[str, dict], want: dict[str, dict]) -> None:
    assert got.keys() == want.keys()
    for layer in want:
        assert got[layer].keys() == want[layer].keys(), layer
        for key, value in want[layer].items():
            if isinstance(value, float):
                assert got[layer][key] == pytest.approx(value, rel=1e-9, abs=1e-9), (layer, key)
            else:
                assert got[layer][key] == value, (layer, key)
                assert type(got[layer][key]) is type(value), (layer, key)


@pytest.mark.parametrize("seed", range(20))
def test_columns_fold_like_the_signals_one_by_one(seed: int) -> None:
    rng = np.random.default_rng(seed)
    reports = random_reports(rng, int(rng.integers(1, 7)), int(rng.integers(1, 6)), ts_ties=seed % 2 == 0)
    batch = health_batch("m-1", "run-1", reports)
    signals = [s for report in reports for s in report]
    assert batch_signals(batch) == signals  # the columns round-trip
    assert_same(batch_layer_aggregates(batch), fold_one_by_one(signals))


@pytest.mark.parametrize("seed", range(10))
def test_merged_into_a_stored_window_it_equals_the_one_by_one_fold(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    earlier = [s for report in random_reports(rng, 3, 4) for s in report]
    stored = fold_one_by_one(earlier)
    reports = random_reports(rng, 4, 4, ts_ties=seed % 2 == 1)
    batch = health_batch("m-1", "run-1", reports)
    merged = {name: merge_layer_aggregates(stored.get(name), agg)
              for name, agg in batch_layer_aggregates(batch).items()}
    assert_same(merged, fold_one_by_one([s for report in reports for s in report], stored))


@pytest.mark.parametrize("seed", range(10))
def test_fold_batch_into_a_stored_window_equals_the_one_by_one_fold(seed: int) -> None:
    rng = np.random.default_rng(200 + seed)
    stored = fold_one_by_one([s for report in random_reports(rng, 2, 5) for s in report])
    del stored["layers.4"]  # a layer the window has not seen yet
    before = {name: dict(agg) for name, agg in stored.items()}
    reports = random_reports(rng, 3, 5, ts_ties=seed % 2 == 0)
    layers = dict(stored)
    fold_batch(layers, health_batch("m-1", "run-1", reports))
    assert_same(layers, fold_one_by_one([s for report in reports for s in report], stored))
    assert stored == before  # the stored aggregates were replaced, not modified


def test_numpy_columns_give_plain_python_values() -> None:
    """Aggregates are stored in a JSON table: numpy scalars must not leak in."""
    batch = dict(SAMPLES["HealthBatch"])
    for name in ("health_score", "activation_variance", "dead_neuron_ratio", "avg_correlation", "gradient_norm",
                 "execution_latency_ms"):
        batch[name] = np.asarray(batch[name])
    for agg in batch_layer_aggregates(batch).values():
        for key, value in agg.items():
            assert type(value) in (int, float, tuple), (key, type(value))
    assert batch_layer_aggregates(batch)["layers.1"]["seed_states"] == ("BLENDING", "DORMANT")


def test_stored_aggregates_are_invisible_to_the_garbage_collector() -> None:
    """A worker's table holds ~10^5 aggregates: none may stay a container the collector walks. Built
    from batches they never are (once one collection has seen the shared seed-state tuples); one
    recovered from the changelog (JSON: a list inside) is until a full collection has seen its
    updated copy, and its copies after that are not."""
    import gc
    import json

    reports = random_reports(np.random.default_rng(3), 3, 4)
    batch = health_batch("m-1", "run-1", reports[:2])
    batch_layer_aggregates(batch)
    gc.collect()  # the shared tuples are untracked once a collection has seen them
    layers = batch_layer_aggregates(batch)
    fold_batch(layers, batch)
    assert not any(gc.is_tracked(agg) for agg in layers.values())

    recovered = json.loads(json.dumps(layers["layers.1"]))
    assert isinstance(recovered["seed_states"], list) and gc.is_tracked(recovered)
    latest = dict(reports[2][1], timestamp_ms=max(recovered["last_timestamp_ms"], reports[2][1]["timestamp_ms"]))
    updated = update_layer_aggregate(recovered, latest)
    assert updated["seed_states"] == tuple(latest["seed_states"]) and updated["count"] == recovered["count"] + 1
    gc.collect()
    assert not gc.is_tracked(updated)
    assert not gc.is_tracked(update_layer_aggregate(updated, latest))


def test_out_of_range_values_are_clipped_as_the_fold_clips_them() -> None:
    batch = dict(SAMPLES["HealthBatch"], health_score=[float("nan"), 2.0, -1.0, float("inf")],
                 avg_correlation=[-5.0, 5.0, 0.0, 0.0])
    aggs = batch_layer_aggregates(batch)
    assert aggs["layers.0"]["health_sum"] == pytest.approx(0.0)  # nan -> 0, then -1 -> 0
    assert aggs["layers.1"]["health_sum"] == pytest.approx(2.0)  # 2 -> 1, inf -> 1
    assert aggs["layers.0"]["avg_correlation"] == 0.0 and aggs["layers.1"]["avg_correlation"] == 0.0
    assert_same(aggs, fold_one_by_one(batch_signals(batch)))
