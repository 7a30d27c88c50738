"""The chaos report: totals, recovery figures, pass/fail, and the entry point's argument checks."""

from __future__ import annotations

import json
import time

import pytest

from tamiyo.chaos import SCENARIOS, main, run_chaos
from tamiyo.chaos.harness import trend
from tamiyo.chaos.report import TOTALS, build_report, scenario_result, summary_lines, write_report


def test_report_sums_scenarios_and_takes_the_worst_recovery(tmp_path) -> None:
    scenarios = {
        "bad_input": {"passed": True, "checks": {"a": True}, "bad_inputs": 1000, "dead_lettered": 1000, "lost": 0,
                      "crashes": 0, "duplicate_applies": 0, "seconds": 3},
        "worker_crash": {"passed": False, "checks": {"no_valid_input_lost": False}, "lost": 2, "crashes": 2,
                         "duplicate_applies": 0, "recovery_seconds": {"restart": 12.5, "takeover": 14.0}},
        "load": {"passed": False, "error": "RuntimeError: boom"},
    }
    report = build_report(scenarios, time.monotonic() - 5, quick=True, broker="test")
    assert all(key in report for key in TOTALS + ("recovery_seconds",))
    assert (report["bad_inputs"], report["dead_lettered"], report["lost"], report["crashes"]) == (1000, 1000, 2, 2)
    assert report["recovery_seconds"] == 14.0
    assert report["recovery_seconds_by_scenario"] == {"worker_crash.restart": 12.5, "worker_crash.takeover": 14.0}
    assert not report["passed"]
    assert report["failed"] == {"worker_crash": ["no_valid_input_lost"], "load": ["RuntimeError: boom"]}
    path = write_report(report, tmp_path / "out" / "report.json")
    assert json.loads(path.read_text())["lost"] == 2
    assert "FAILED" in summary_lines(report)[0]


def test_a_scenario_result_passes_only_when_every_check_held_and_carries_every_total() -> None:
    held = scenario_result({"a": True, "b": True}, lost=0, crashes=2, duplicate_applies=0, seconds=4.0)
    assert held["passed"] and set(TOTALS) <= set(held) and held["crashes"] == 2 and held["seconds"] == 4.0
    assert (held["bad_inputs"], held["dead_lettered"]) == (0, 0)
    failed = scenario_result({"a": True, "b": False}, lost=1, crashes=0, duplicate_applies=0, bad_inputs=5,
                             dead_lettered=4)
    assert not failed["passed"] and (failed["bad_inputs"], failed["dead_lettered"], failed["lost"]) == (5, 4, 1)
    report = build_report({"x": held, "y": failed}, time.monotonic(), quick=True, broker="test")
    assert (report["crashes"], report["lost"], report["failed"]) == (2, 1, {"y": ["b"]})


def test_unknown_scenarios_are_refused_before_anything_starts(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown chaos scenario"):
        run_chaos(tmp_path / "r.json", only=["bad_input", "meteor_strike"])
    assert not (tmp_path / "r.json").exists()
    with pytest.raises(ValueError):
        main(["--out", str(tmp_path / "r.json"), "--only", "nope"])
    assert SCENARIOS[0] == "bad_input" and len(SCENARIOS) == 7


def test_trend_is_the_least_squares_slope() -> None:
    assert trend([]) == 0.0 and trend([(0, 5)]) == 0.0
    assert trend([(0, 1), (1, 3), (2, 5)]) == pytest.approx(2.0)
    assert trend([(0, 4), (1, 4), (2, 4)]) == 0.0
