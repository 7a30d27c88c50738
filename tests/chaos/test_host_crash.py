"""Scenario 4: hosts die mid-run; the worker keeps serving; the dead runs end with the default reward."""

from __future__ import annotations

import pytest

from tests.chaos.conftest import explain, run_quick

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_dead_hosts_leave_no_stuck_state_and_end_with_default_reward(chaos_env) -> None:
    result = run_quick(chaos_env, "host_crash")
    assert result["passed"], explain(result)
    assert result["dead_runs"] >= 1 and result["dead_runs_ended_by_default"] == result["dead_runs"]
    assert all(d["last_reward"] == result["default_reward"] and d["last_done"] for d in result["dead_run_details"])
    assert result["survivor_imputed_transitions"] == 0 and result["lag_after"] < 2_000
