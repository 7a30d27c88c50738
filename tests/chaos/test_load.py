"""Scenario 6 (scaled down): 300 simulated models for 30 s; bounded memory, lag not growing."""

from __future__ import annotations

import pytest

from tests.chaos.conftest import explain, run_quick

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_fleet_load_keeps_memory_bounded_and_lag_flat(chaos_env) -> None:
    result = run_quick(chaos_env, "load")
    assert result["passed"], explain(result)
    # Per model and epoch two HealthReports and an EpochOutcome, plus topologies and command outcomes:
    # one run measured 9,882 input messages (hosts sent ~12x more when each signal was a message).
    assert result["models"] >= 300 and result["input_messages"] > 5_000
    assert result["peak_rss_mb"] < result["rss_limit_mb"]
    assert result["drain_seconds"] is not None and result["lost"] == 0
