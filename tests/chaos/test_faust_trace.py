"""Reading the Faust traces of chaos workers: lost inputs as contiguous runs, each explained from the traces."""

from __future__ import annotations

from tamiyo.chaos.faust_trace import contiguous_runs, explain, gaps_by_topic


def test_lost_positions_become_contiguous_runs_per_partition() -> None:
    lost = [("p.health", 0, 7), ("p.health", 0, 5), ("p.health", 0, 6), ("p.health", 0, 9), ("p.outcomes", 1, 3)]
    assert contiguous_runs(lost) == {"p.health/0": [(5, 7), (9, 9)], "p.outcomes/1": [(3, 3)]}


def test_a_lost_run_is_explained_by_the_gap_the_clear_and_the_commit_that_passed_it() -> None:
    traces = {"w1": [{"kind": "gap", "t": 1.0, "tp": "p.health/0", "first": 4, "last": 8, "committed": 3},
                     {"kind": "gap", "t": 1.1, "tp": "p.health/1", "first": 4, "last": 8, "committed": 3},
                     {"kind": "cleared", "t": 1.2, "dropped": {"p.health/0": [6, 7, 2]}},
                     {"kind": "commit", "t": 1.5, "offsets": {"p.health/0": 6}},
                     {"kind": "commit", "t": 2.0, "offsets": {"p.health/0": 9}}],
              "w2": [{"kind": "commit", "t": 0.5, "offsets": {"p.health/0": 4}}]}
    lines = explain({"p.health/0": [(6, 7)], "p.outcomes/1": [(3, 3)]}, traces)
    assert gaps_by_topic(traces) == {"w1": {"health": 2}, "w2": {}}
    assert lines == ["p.health/0 6-7 (2): w1 acked 4-8 as a gap (committed 3); w1 cleared 2 queued records 6-7; "
                     "w1 committed 9 at 2.0",
                     "p.outcomes/1 3-3 (1): not in any trace"]
