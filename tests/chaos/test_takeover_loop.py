"""The takeover reproduction (python -m tamiyo.chaos.takeover_loop), one cycle: it runs and finds no loss."""

from __future__ import annotations

import pytest

from tamiyo.chaos import takeover_loop

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.mark.timeout(900)
def test_one_takeover_cycle_loses_nothing_and_faust_acks_nothing_unseen(chaos_env) -> None:
    try:
        result = takeover_loop.run(chaos_env, cycles=1, models=8, partitions=4, seed=0)
    finally:
        for child in list(chaos_env.children):
            child.stop(10)
        chaos_env.children.clear()
    assert result["passed"] and result["valid_inputs"] > 1000, result
    assert result["lost"] == 0 and result["lost_runs"] == {} and result["explanations"] == []
    assert set(result["gaps_acked"]) == {"w1", "w2"} and not any(result["gaps_acked"].values())
    assert result["seek_guard"] and result["seek_delay_s"] == 0.5
