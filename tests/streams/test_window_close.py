"""The window-close trigger's pure logic: which epoch is due, and one decision per model and epoch."""

from __future__ import annotations

import pytest

from models.decide import GateConfig
from models.graph import update_layer_aggregate
from models.heuristic import ThresholdHeuristic
from streams.decisions import decide, decision_id, last_decided_epoch, prepare
from streams.window_close import TRIGGER, OutcomeMarks, closed_until, due_on_close, newest_closed_windows
from tamiyo.config import Settings
from tests.samples import SAMPLES

W, GRACE = 10.0, 2.0


def state(epoch: int, run_id: str = "run-1", health: float = 0.1) -> dict:
    layers = {}
    for name in ("layers.0", "layers.1"):
        signal = dict(SAMPLES["HealthSignal"], layer_name=name, epoch=epoch, run_id=run_id,
                      health_score=health if name == "layers.1" else 0.9, seed_states=["DORMANT", "DORMANT"],
                      active_seeds=0)
        layers[name] = update_layer_aggregate(None, signal)
    return {"run_id": run_id, "epoch": epoch, "layers": layers}


def entry(model_id: str, start: float, value: dict) -> tuple:
    return (model_id, (start, start + W - 0.1)), value


def never_decided(model_id: str, run_id: str) -> int:
    return -1


def test_the_newest_closed_window_with_signals_counts_per_model() -> None:
    entries = [entry("a", 100.0, state(1)), entry("a", 110.0, state(3)), entry("a", 120.0, state(5)),
               entry("b", 100.0, state(2)), entry("b", 110.0, {})]
    # At 132 s the window [120, 130) has been closed for the grace period; at 131.9 s not yet.
    assert closed_until(132.0, W, GRACE) == 130.0 and closed_until(131.9, W, GRACE) == 120.0
    closed = newest_closed_windows(entries, 132.0, W, GRACE)
    assert {m: (start, s["epoch"]) for m, (start, s) in closed.items()} == {"a": (120.0, 5), "b": (100.0, 2)}
    closed = newest_closed_windows(entries, 131.9, W, GRACE)
    assert closed["a"][0] == 110.0
    assert newest_closed_windows(entries, 111.9, W, GRACE) == {}


def test_the_epoch_before_the_newest_signals_is_due_unless_decided() -> None:
    entries = [entry("a", 100.0, state(3)), entry("b", 100.0, state(0)), entry("c", 100.0, state(4)),
               entry("d", 100.0, state(2, run_id="run-2"))]
    decided = {("c", "run-1"): 3, ("d", "run-1"): 7}
    due = due_on_close(entries, 113.0, W, GRACE, lambda m, r: decided.get((m, r), -1))
    # a: signals of epoch 3 mean epoch 2 ended; b: epoch 0 is still running; c: 3 already decided;
    # d: decided epochs of an earlier run do not count.
    assert sorted((o["model_id"], o["run_id"], o["epoch"]) for o, _ in due) == [("a", "run-1", 2), ("d", "run-2", 1)]
    outcome, start = next(d for d in due if d[0]["model_id"] == "a")
    assert start == 100.0 and outcome["timestamp_ms"] == 110_000
    assert due_on_close(entries, 111.0, W, GRACE, never_decided) == []


def test_outcomes_sent_before_the_close_are_awaited_later_ones_are_not() -> None:
    marks = OutcomeMarks()
    assert not marks.caught_up(0, 110.0, None, 0)  # nothing fetched yet
    assert marks.caught_up(1, 110.0, 0, 0)  # an empty partition
    # 5 outcomes were on partition 0 when the window closed; 3 are processed and committed.
    assert not marks.caught_up(0, 110.0, 5, 3)
    # New outcomes keep coming (high watermark 9): once the first 5 are done, the partition counts
    # as caught up for this close, and the next close waits for what was there by then.
    assert marks.caught_up(0, 110.0, 9, 5)
    assert not marks.caught_up(0, 120.0, 9, 5)
    assert marks.caught_up(0, 120.0, 14, 9)


def test_one_decision_per_model_and_epoch_whichever_trigger_comes_first() -> None:
    cfg = GateConfig(confidence_threshold=0.5, cooldown_epochs=2, max_adaptations_per_epoch=1, epsilon=0.0)
    topology = SAMPLES["ModelTopology"]
    policy = ThresholdHeuristic()
    (outcome, start), = due_on_close([entry("m-1", 100.0, state(4))], 113.0, W, GRACE, never_decided)
    item = prepare(outcome, topology, [None, state(4)], None, cfg, trigger=TRIGGER)
    made, = decide([item], policy, policy.version, cfg)
    assert made.record["trigger"] == "window_close" and made.record["epoch"] == 3
    assert made.record["action"] == "GERMINATE" and made.record["layer_name"] == "layers.1"
    assert made.command["decision_id"] == made.record["decision_id"] == decision_id("m-1", "run-1", 3)
    gate = made.gate
    assert last_decided_epoch(gate, "run-1") == 3
    # The EpochOutcome of epoch 3 arrives late: nothing more to decide for that epoch (or before it).
    late = dict(SAMPLES["EpochOutcome"], epoch=3)
    assert prepare(late, topology, [state(4)], gate, cfg) is None
    assert due_on_close([entry("m-1", 100.0, state(4))], 113.0, W, GRACE,
                        lambda m, r: last_decided_epoch(gate, r)) == []
    # Had the outcome come first (or been decided again after a crash), the id would be the same,
    # so a host applies the epoch's command once.
    again = prepare(late, topology, [state(4)], None, cfg)
    first, = decide([again], policy, policy.version, cfg)
    assert first.record["trigger"] == "epoch_end" and first.record["decision_id"] == made.record["decision_id"]
    # The next epoch is decided normally.
    assert prepare(dict(late, epoch=4), topology, [state(5)], gate, cfg) is not None


def test_the_trigger_is_on_by_default_and_its_settings_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TAMIYO_WINDOW_CLOSE_TRIGGER", "TAMIYO_WINDOW_CLOSE_GRACE_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings.from_env()
    assert (settings.window_close_trigger, settings.window_close_grace_seconds) == ("on", 2.0)
    monkeypatch.setenv("TAMIYO_WINDOW_CLOSE_TRIGGER", "off")
    assert Settings.from_env().window_close_trigger == "off"
    with pytest.raises(ValueError, match="TAMIYO_WINDOW_CLOSE_TRIGGER"):
        Settings.from_env(window_close_trigger="yes")
    with pytest.raises(ValueError, match="TAMIYO_WINDOW_CLOSE_GRACE_SECONDS"):
        Settings.from_env(window_close_grace_seconds=60.0, window_expires_seconds=60.0)


def test_no_window_close_scan_while_tables_recover(monkeypatch: pytest.MonkeyPatch) -> None:
    """During a rebalance the gate state of a partition taken over is only partly recovered: the
    scan waits (and runs on the first tick after, even if nothing else changed)."""
    import asyncio
    from types import SimpleNamespace

    from streams import policy_agent
    from streams.faust_compat import tables_settled

    scans: list[frozenset] = []

    async def scan(app, ctx, outbox, now, owned, marks):  # stands in for the real scan
        scans.append(owned)
        return 0, 0

    monkeypatch.setattr(policy_agent, "decide_on_window_close", scan)
    monkeypatch.setattr(policy_agent, "active_partitions", lambda app, topic: {0, 1})
    ctx = SimpleNamespace(settings=Settings.from_env(bootstrap_servers="127.0.0.1:1", topic_prefix="t"))
    app = SimpleNamespace(rebalancing=True, in_recovery=False)
    ticker = policy_agent.WindowCloseScan()
    assert not tables_settled(app)
    assert asyncio.run(ticker.tick(app, ctx, None)) == 0 and scans == []
    app.rebalancing, app.in_recovery = False, True  # streams not resumed until recovery ends
    assert asyncio.run(ticker.tick(app, ctx, None)) == 0 and scans == []
    app.in_recovery = False
    asyncio.run(ticker.tick(app, ctx, None))
    assert scans == [frozenset({0, 1})] and tables_settled(app)
