"""The bench harness: medians, targets, and the shapes of results.json / results.md."""

from __future__ import annotations

import json

import pytest

from tamiyo.bench.env import steady_rate
from tamiyo.bench.harness import Results, Target, markdown, percentile, summarize, write_results
from tamiyo.bench.runner import GROUPS, selected


def test_summarize_is_median_min_max_of_finite_values() -> None:
    assert summarize([3.0, 1.0, 2.0]) == {"value": 2.0, "runs": 3, "min": 1.0, "max": 3.0}
    assert summarize([4, 1, 3, 2]) == {"value": 2.5, "runs": 4, "min": 1.0, "max": 4.0}
    assert summarize([1.0, float("nan"), 5.0])["runs"] == 2
    with pytest.raises(ValueError):
        summarize([float("inf")])


def test_percentile_interpolates() -> None:
    values = list(range(101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile([1.0, 2.0], 50) == 1.5
    assert percentile([7.0], 99) == 7.0


def test_targets_absolute_and_relative() -> None:
    results = Results()
    results.add("fast_per_s", [30_000, 25_000, 20_500], "x/s", Target(">=", 20_000))
    results.add("lat_ms", [60, 40, 55], "ms", Target("<=", 50))
    results.add("naive_per_s", [1_000, 1_100, 900], "x/s")
    results.targets["fast_per_s_vs_naive"] = Target(">=", 10, ref="naive_per_s")
    results.add("fast_per_s_vs_naive", [25_000], "x/s")
    assert results.verdict("fast_per_s") is True
    assert results.verdict("lat_ms") is False
    assert results.verdict("naive_per_s") is None
    assert results.verdict("fast_per_s_vs_naive") is True  # 25,000 >= 10 x 1,000
    assert Target(">=", 10, ref="naive_per_s").describe() == ">= 10.0× naive_per_s"
    with pytest.raises(ValueError):
        Target("==", 1)


def test_results_json_and_markdown_shapes(tmp_path) -> None:
    results = Results()
    results.add("ingest_signals_per_s", [21_000, 19_000, 20_000], "signals/s", Target(">=", 20_000), partitions=4)
    results.skip("learning_loop_latency_s", "training job not ready")
    results.note("broker: test")
    out = tmp_path / "bench" / "results.json"
    data = write_results(results, out)
    on_disk = json.loads(out.read_text())
    assert on_disk == json.loads(json.dumps(data))
    metric = on_disk["metrics"]["ingest_signals_per_s"]
    for key in ("value", "unit", "runs", "min", "max", "target", "pass"):
        assert key in metric
    assert metric["value"] == 20_000 and metric["runs"] == 3 and metric["min"] == 19_000 and metric["max"] == 21_000
    assert metric["pass"] is True and metric["partitions"] == 4
    assert on_disk["not_measured"] == {"learning_loop_latency_s": "training job not ready"}
    md = (tmp_path / "bench" / "results.md").read_text()
    assert md == markdown(on_disk)
    assert "| ingest_signals_per_s | 20,000 | signals/s | 19,000 – 21,000 | 3 | >= 20,000 | PASS |" in md
    assert "learning_loop_latency_s" in md and "training job not ready" in md
    assert "broker: test" in md


def test_steady_rate_skips_startup_and_tail() -> None:
    # Nothing for 10 s (group join), then 1,000/s until 10,000, then a slow tail.
    samples = [(float(t), 0) for t in range(10)] + [(10.0 + i, 1_000 * i) for i in range(1, 10)] + [(25.0, 10_000)]
    assert steady_rate(samples, 10_000) == pytest.approx(1_000)
    with pytest.raises(RuntimeError):
        steady_rate([(0.0, 0), (1.0, 0)], 100)


def test_only_selects_groups_and_metrics_in_run_order() -> None:
    assert selected(None) == list(GROUPS)
    assert selected(["policy"]) == ["policy_single", "policy_batched"]
    assert selected(["decision_latency_p99_ms", "broker"]) == ["broker", "decision"]
    with pytest.raises(ValueError):
        selected(["nope"])


def test_only_keeps_the_other_groups_of_an_existing_results_file(tmp_path) -> None:
    from tamiyo.bench.runner import _keep_other_groups

    old = Results()
    old.add("ingest_signals_per_s", [5_000, 6_000, 7_000], "signals/s", Target(">=", 20_000))
    old.add("replay_records_per_s", [1.0, 2.0, 3.0], "records/s")
    old.skip("learning_loop_latency_s", "not ready")
    out = tmp_path / "results.json"
    write_results(old, out)
    fresh = Results()
    _keep_other_groups(fresh, out, ["replay"])
    fresh.add("replay_records_per_s", [10.0, 20.0, 30.0], "records/s")
    data = fresh.as_dict()
    assert data["metrics"]["ingest_signals_per_s"]["value"] == 6_000
    assert data["metrics"]["ingest_signals_per_s"]["pass"] is False
    assert data["metrics"]["replay_records_per_s"]["value"] == 20.0
    assert data["not_measured"] == {"learning_loop_latency_s": "not ready"}
    assert any("kept from the previous results file" in n for n in data["notes"])


def test_cpu_shares_count_the_cores_each_side_used() -> None:
    import os
    import subprocess
    import time

    from tamiyo.bench.decision import CpuShares

    idle = subprocess.Popen(["sleep", "5"])  # no interpreter start-up inside the measured window
    time.sleep(0.2)
    try:
        usage = CpuShares(worker=[os.getpid()], broker=[idle.pid], gone=[])
        end = time.monotonic() + 0.3
        while time.monotonic() < end:  # this process works: it is both "worker" and the bench side
            pass
        cores = usage.cores()
    finally:
        idle.kill()
        idle.wait()
    assert set(cores) == {"load_generator_and_collector", "worker", "broker"}  # no pids: not reported
    assert 0.3 < cores["worker"] <= 1.2 and 0.3 < cores["load_generator_and_collector"] <= 1.2
    assert cores["broker"] < 0.2
