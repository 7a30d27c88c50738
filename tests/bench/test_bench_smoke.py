"""The two cheapest benchmarks end to end, reduced: policy latency (CPU) and raw broker consumption."""

from __future__ import annotations

import json

import pytest

from tamiyo.bench.ingest import IngestConfig
from tamiyo.bench.policy import PolicyConfigBench
from tamiyo.bench.runner import BenchConfig, run_bench

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_policy_single_and_broker_consume_write_results(kafka_bootstrap, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    config = BenchConfig(runs=3, ingest=IngestConfig(runs=3, models=20, signals=2_000),
                         policy=PolicyConfigBench(runs=3, single_calls=50, single_warmup=10))
    out = tmp_path / "results.json"
    data = run_bench(out, ["policy_single", "broker"], config)
    assert set(data["metrics"]) == {"policy_single_p50_ms", "policy_single_p99_ms", "broker_consume_per_s"}
    assert data["not_measured"] == {}
    for name, metric in data["metrics"].items():
        assert metric["runs"] == 3, name
        assert metric["min"] <= metric["value"] <= metric["max"], name
    assert data["metrics"]["broker_consume_per_s"]["value"] > 0
    assert data["metrics"]["policy_single_p99_ms"]["target"] == "<= 1.00"
    assert isinstance(data["metrics"]["policy_single_p99_ms"]["pass"], bool)
    assert json.loads(out.read_text())["metrics"].keys() == data["metrics"].keys()
    md = out.with_suffix(".md").read_text()
    assert "| policy_single_p99_ms |" in md and "| broker_consume_per_s |" in md
