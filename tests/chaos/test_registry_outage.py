"""Scenario 5: the MLflow server goes away and comes back; bad versions are refused."""

from __future__ import annotations

import pytest

from tests.chaos.conftest import explain, run_quick

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.mark.timeout(600)
def test_worker_rides_out_a_registry_outage_and_refuses_bad_versions(chaos_env) -> None:
    result = run_quick(chaos_env, "registry_outage")
    assert result["passed"], explain(result)
    assert result["decisions_during_outage"] > 0 and len(result["versions_during_outage"]) == 1
    assert result["versions_during_outage"][0].endswith("/v1")
    assert result["versions_after_refusals"] == [result["versions_during_outage"][0].replace("/v1", "/v2")]
    assert set(result["refused_versions"]) == {"corrupt_weights", "pickle_payload", "incompatible_spec"}
    assert result["checks"]["pickle_payload_never_ran"]
