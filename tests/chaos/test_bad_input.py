"""Scenario 1: ≥1,000 malformed messages of many kinds interleaved with valid ones."""

from __future__ import annotations

import pytest

from tamiyo.chaos.bad_input import EXPECTED
from tests.chaos.conftest import explain, run_quick

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_every_bad_message_is_dead_lettered_and_nothing_valid_is_lost(chaos_env) -> None:
    result = run_quick(chaos_env, "bad_input")
    assert result["passed"], explain(result)
    assert result["bad_inputs"] >= 1000
    assert result["dead_lettered"] == result["bad_inputs"]  # matched by (topic, partition, offset)
    assert result["lost"] == 0 and result["wrongly_dead_lettered"] == 0
    assert set(result["by_kind"]) == set(EXPECTED)  # every kind was sent and caught
    kinds = result["by_kind"]
    assert kinds["no_topology"]["error_kinds"] == {"unknown_model": kinds["no_topology"]["sent"]}  # parked, expired
    assert kinds["oversized"]["error_kinds"] == {"oversized": kinds["oversized"]["sent"]}
