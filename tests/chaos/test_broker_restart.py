"""Scenario 7: the Apache Kafka broker restarts mid-stream (a dedicated broker, not the session one)."""

from __future__ import annotations

import pytest

from tamiyo.broker import broker_kind_available
from tests.chaos.conftest import explain, run_quick

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.mark.timeout(600)
def test_worker_and_fleet_reconnect_after_a_broker_restart(chaos_env) -> None:
    if not broker_kind_available("kafka"):
        pytest.skip("needs java and the Kafka jars for a dedicated embedded broker")
    result = run_quick(chaos_env, "broker_restart")
    assert result["passed"], explain(result)
    assert result["restarts"] and result["worker_exit_code"] is None
    assert result["fleet"]["delivery_failures"] == 0 and result["lost"] == 0
