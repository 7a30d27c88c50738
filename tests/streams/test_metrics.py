"""The worker's Prometheus metrics: what one delivered decision batch records (pure logic)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from streams.faust_compat import PartitionEvent
from streams.metrics import WorkerMetrics
from streams.policy_agent import _record_time


def samples(metrics: WorkerMetrics, name: str) -> dict[str, float]:
    return {s.name + str(sorted(s.labels.items())): s.value for family in metrics.registry.collect()
            if family.name == name for s in family.samples}


def test_decision_latency_histogram_counts_each_decision_and_clamps_clock_skew() -> None:
    metrics = WorkerMetrics()
    metrics.observe_decisions(3, 0.004, "v7", [0.003, -1.0, 0.3])  # -1.0: a host clock ahead of the worker
    got = samples(metrics, "tamiyo_decision_latency_seconds")
    assert got["tamiyo_decision_latency_seconds_count[]"] == 3
    assert got["tamiyo_decision_latency_seconds_sum[]"] == pytest.approx(0.303)
    assert got["tamiyo_decision_latency_seconds_bucket[('le', '0.005')]"] == 2
    assert got["tamiyo_decision_latency_seconds_bucket[('le', '0.2')]"] == 2
    assert got["tamiyo_decision_latency_seconds_bucket[('le', '0.5')]"] == 3
    assert samples(metrics, "tamiyo_decision_batch_seconds")["tamiyo_decision_batch_seconds_count[]"] == 1
    assert samples(metrics, "tamiyo_policy")["tamiyo_policy_info[('version', 'v7')]"] == 1


def test_record_time_is_the_messages_kafka_timestamp_when_there_is_one() -> None:
    assert _record_time(SimpleNamespace(message=SimpleNamespace(timestamp=1_700_000_000.25))) == 1_700_000_000.25
    assert _record_time(SimpleNamespace(message=SimpleNamespace(timestamp=None))) is None
    assert _record_time(PartitionEvent("outcomes", 0)) is None  # a window-close decision: no outcome
    assert _record_time(object()) is None


def test_metrics_are_served_on_the_configured_address(monkeypatch) -> None:
    """TAMIYO_METRICS_ADDR (default 127.0.0.1; 0.0.0.0 inside a container) is where /metrics listens."""
    import socket
    import urllib.request

    from tamiyo.config import Settings

    assert Settings.from_env().metrics_addr == "127.0.0.1"
    monkeypatch.setenv("TAMIYO_METRICS_ADDR", "127.0.0.2")
    settings = Settings.from_env()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    WorkerMetrics().serve(port, settings.metrics_addr)
    with urllib.request.urlopen(f"http://127.0.0.2:{port}/metrics", timeout=5) as reply:
        assert b"tamiyo_policy_hot_swaps_total" in reply.read()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
