"""Window aggregates and graph building (models.graph)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from models.graph import (
    EPOCHS_SINCE_ADAPTED_CAP,
    FEATURE_CLIP,
    FEATURE_INDEX,
    FEATURE_NAMES,
    FEATURE_SPEC_VERSION,
    build_graph,
    health_mean,
    health_trend,
    merge_layer_aggregates,
    update_layer_aggregate,
)
from tests.samples import SAMPLES


def signal(layer: str = "l0", t_ms: int = 0, health: float = 0.5, **kw) -> dict:
    base = dict(SAMPLES["HealthSignal"])
    base.update(layer_name=layer, timestamp_ms=t_ms, health_score=health)
    base.update(kw)
    return base


def fold(signals: list[dict]) -> dict:
    agg = None
    for s in signals:
        agg = update_layer_aggregate(agg, s)
    return agg


def topology(names: list[str], edges: list[tuple[str, str]]) -> dict:
    return {
        "model_id": "m",
        "run_id": "r",
        "timestamp_ms": 0,
        "layers": [
            {"name": n, "layer_type": "KasminaLayer", "input_size": 8, "output_size": 4,
             "parameter_count": 36, "num_seeds": 2}
            for n in names
        ],
        "edges": [{"source": s, "target": t} for s, t in edges],
    }


def col(graph, name: str) -> np.ndarray:
    return graph.node_features[:, FEATURE_INDEX[name]]


# --------------------------------------------------------------------------- aggregates


def test_aggregate_statistics() -> None:
    sigs = [
        signal(t_ms=1000, health=0.8, error_count=1, execution_latency_ms=2.0, epoch=1, step=10),
        signal(t_ms=2000, health=0.2, error_count=2, execution_latency_ms=4.0, epoch=1, step=20,
               seed_states=["DORMANT", "TRAINING"], dead_neuron_ratio=0.4),
        signal(t_ms=3000, health=0.5, error_count=0, execution_latency_ms=6.0, epoch=2, step=30,
               seed_states=["TRAINING", "TRAINING"], dead_neuron_ratio=0.3),
    ]
    agg = fold(sigs)
    assert agg["count"] == 3
    assert health_mean(agg) == pytest.approx(0.5)
    assert agg["health_min"] == 0.2 and agg["health_max"] == 0.8
    assert agg["health_first"] == 0.8 and agg["health_last"] == 0.5
    assert agg["error_sum"] == 3
    assert agg["latency_sum_ms"] / agg["count"] == pytest.approx(4.0)
    assert agg["seed_states"] == ("TRAINING", "TRAINING")
    assert agg["dead_neuron_ratio"] == 0.3
    assert (agg["epoch"], agg["step"], agg["last_timestamp_ms"]) == (2, 30, 3000)
    assert agg["first_timestamp_ms"] == 1000


def test_trend_is_fitted_change_over_window() -> None:
    ts = [0, 1000, 2500, 4000]
    hs = [0.9, 0.8, 0.65, 0.5]  # exactly linear: -0.1 per second over 4 s
    agg = fold([signal(t_ms=t + 50_000, health=h) for t, h in zip(ts, hs)])
    assert health_trend(agg) == pytest.approx(-0.4, abs=1e-9)

    rng = np.random.default_rng(1)
    t = np.sort(rng.integers(0, 60_000, size=20))
    h = rng.random(20)
    agg = fold([signal(t_ms=int(a), health=float(b)) for a, b in zip(t, h)])
    slope = np.polyfit(t / 1000.0, h, 1)[0]
    expected = float(np.clip(slope * (t[-1] - t[0]) / 1000.0, -1, 1))
    assert health_trend(agg) == pytest.approx(expected, abs=1e-9)


def test_trend_degenerate_cases() -> None:
    assert health_trend(fold([signal(health=0.1)])) == 0.0
    assert health_trend(fold([signal(t_ms=5, health=0.1), signal(t_ms=5, health=0.9)])) == 0.0
    assert health_trend(fold([signal(t_ms=t, health=0.7) for t in (0, 10, 20)])) == pytest.approx(0.0)


def test_out_of_order_signals_pick_first_and_last_by_timestamp() -> None:
    agg = fold([signal(t_ms=2000, health=0.6, step=2), signal(t_ms=1000, health=0.9, step=1)])
    assert agg["health_last"] == 0.6 and agg["step"] == 2
    assert agg["health_first"] == 0.9 and agg["first_timestamp_ms"] == 1000
    in_order = fold([signal(t_ms=1000, health=0.9), signal(t_ms=2000, health=0.6)])
    assert health_trend(agg) == pytest.approx(health_trend(in_order)) == pytest.approx(-0.3)


def test_merge_equals_folding_everything() -> None:
    rng = np.random.default_rng(7)
    sigs = [signal(t_ms=int(1_700_000_000_000 + 1000 * i + rng.integers(0, 500)), health=float(rng.random()),
                   error_count=int(rng.integers(0, 3)), execution_latency_ms=float(rng.random()))
            for i in range(12)]
    whole = fold(sigs)
    for a_part, b_part in ((sigs[:5], sigs[5:]), (sigs[7:], sigs[:7])):  # also b earlier than a
        merged = merge_layer_aggregates(fold(a_part), fold(b_part))
        for key in ("count", "error_sum", "health_min", "health_max", "first_timestamp_ms",
                    "last_timestamp_ms", "health_first", "health_last"):
            assert merged[key] == whole[key], key
        assert merged["health_sum"] == pytest.approx(whole["health_sum"])
        assert merged["latency_sum_ms"] == pytest.approx(whole["latency_sum_ms"])
        assert health_trend(merged) == pytest.approx(health_trend(whole), abs=1e-9)
    assert merge_layer_aggregates(None, whole) == whole
    with pytest.raises(ValueError):
        merge_layer_aggregates(None, None)


def test_update_does_not_mutate_and_stays_constant_size() -> None:
    agg = fold([signal(t_ms=0)])
    before = json.dumps(agg, sort_keys=True)
    nxt = update_layer_aggregate(agg, signal(t_ms=1000, health=0.1))
    assert json.dumps(agg, sort_keys=True) == before
    assert nxt["count"] == 2
    big = fold([signal(t_ms=i * 1000, health=(i % 10) / 10) for i in range(500)])
    assert set(big) == set(agg)
    assert len(json.dumps(big)) < 2 * len(json.dumps(agg))  # O(1) state, not a history


def test_garbage_values_are_sanitised_and_json_safe() -> None:
    bad = signal(t_ms=0, health=float("nan"), activation_variance=float("inf"), dead_neuron_ratio=7.0,
                 avg_correlation=-3.0, gradient_norm=float("-inf"), execution_latency_ms=float("nan"),
                 error_count=-4)
    one = fold([bad])
    assert one["health_last"] == 0.0
    assert one["dead_neuron_ratio"] == 1.0 and one["avg_correlation"] == -1.0
    assert one["gradient_norm"] == 0.0 and one["latency_sum_ms"] == 0.0 and one["error_sum"] == 0
    assert math.isfinite(one["activation_variance"])
    agg = update_layer_aggregate(one, signal(t_ms=1000, health=2.0))
    text = json.dumps(agg, allow_nan=False)  # raises on NaN/inf
    assert json.loads(text) == dict(agg, seed_states=list(agg["seed_states"]))  # JSON has no tuples
    assert agg["health_min"] == 0.0 and agg["health_max"] == 1.0


# --------------------------------------------------------------------------- graph


def test_feature_spec() -> None:
    assert 14 <= len(FEATURE_NAMES) <= 20
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    assert FEATURE_SPEC_VERSION == "v1"


def test_build_graph_features_edges_and_missing_data() -> None:
    topo = topology(
        ["a", "b", "c", "d"],
        [("c", "d"), ("a", "b"), ("b", "c"), ("a", "b"), ("ghost", "a"), ("b", "ghost"), ("d", "d")],
    )
    aggs = {
        "a": fold([signal("a", 0, 0.9), signal("a", 1000, 0.7, seed_states=["TRAINING", "DORMANT"])]),
        "b": fold([signal("b", 0, 0.2, seed_states=["FOSSILIZED", "CULLED"], active_seeds=0)]),
        "d": fold([signal("d", 0, 0.4, seed_states=["DORMANT", "DORMANT"])]),
        "zzz": fold([signal("zzz", 0, 0.0)]),  # not in topology: ignored
    }
    g = build_graph(topo, aggs, {"a": 3, "d": 9}, epoch=10)

    assert g.layer_names == ["a", "b", "c", "d"]
    assert g.node_features.shape == (4, len(FEATURE_NAMES)) and g.node_features.dtype == np.float32
    assert g.edge_index.dtype == np.int64
    assert g.edge_index.T.tolist() == [[2, 3], [0, 1], [1, 2]]  # first-seen order, no dup/self/unknown
    assert g.dormant_seed == [1, None, None, 0]  # c has no data: not adaptable
    assert (g.model_id, g.run_id, g.epoch) == ("m", "r", 10)

    assert col(g, "health_mean").tolist() == pytest.approx([0.8, 0.2, 1.0, 0.4])
    assert col(g, "health_min")[0] == pytest.approx(0.7)
    assert col(g, "health_last")[0] == pytest.approx(0.7)
    assert col(g, "health_trend")[0] == pytest.approx(-0.2)
    assert col(g, "has_data").tolist() == [1.0, 1.0, 0.0, 1.0]
    assert col(g, "dormant_seed_fraction").tolist() == pytest.approx([0.5, 0.0, 0.0, 1.0])
    assert col(g, "relative_depth").tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert col(g, "ever_adapted").tolist() == [1.0, 0.0, 0.0, 1.0]
    assert col(g, "epochs_since_adapted").tolist() == pytest.approx(
        [min(7, EPOCHS_SINCE_ADAPTED_CAP) / EPOCHS_SINCE_ADAPTED_CAP, 1.0, 1.0, 0.1]
    )
    assert col(g, "log_parameter_count")[2] == pytest.approx(math.log1p(36))
    assert col(g, "log_input_size")[0] == pytest.approx(math.log1p(8))
    assert col(g, "log_error_count")[0] == pytest.approx(math.log1p(0))
    assert col(g, "active_seed_fraction")[1] == 0.0
    assert col(g, "active_seed_fraction")[0] == pytest.approx(0.5)


def test_build_graph_is_nan_free_on_hostile_input() -> None:
    topo = topology(["a", "b"], [("a", "b")])
    topo["layers"][0].update(parameter_count=10**30, input_size=-5, output_size=None)
    aggs = {"a": fold([signal("a", 0, float("nan"), gradient_norm=1e308, activation_variance=-1.0,
                              total_seeds=0, seed_states=[])])}
    aggs["a"]["activation_variance"] = float("nan")  # even a corrupted table entry
    g = build_graph(topo, aggs, {"b": 12}, epoch=3)  # adapted "in the future"
    assert np.isfinite(g.node_features).all()
    assert np.abs(g.node_features).max() <= FEATURE_CLIP
    assert g.dormant_seed == [None, None]
    assert col(g, "epochs_since_adapted")[1] == 0.0


def test_build_graph_empty_and_duplicate_layers() -> None:
    g = build_graph(topology([], []), {}, {}, epoch=0)
    assert g.node_features.shape == (0, len(FEATURE_NAMES)) and g.edge_index.shape == (2, 0)
    g = build_graph(topology(["a", "a", "b"], [("a", "b")]), {}, {}, epoch=0)
    assert g.layer_names == ["a", "b"] and g.edge_index.T.tolist() == [[0, 1]]
    assert col(g, "relative_depth").tolist() == [0.0, 1.0]
