"""Epoch outcomes that wait hold their commit until decided; a failed send parks them again; what waits on a
partition the worker no longer owns is left to its next owner."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from streams import faust_compat, policy_agent
from streams.context import WorkerContext
from tamiyo.config import Settings


def event(offset: int) -> SimpleNamespace:
    return SimpleNamespace(message=SimpleNamespace(tp=TP("t.outcomes", 0), offset=offset))


@pytest.fixture
def ctx(monkeypatch: pytest.MonkeyPatch) -> WorkerContext:
    """A context whose model m has a topology and its signals; deciding and sending are stubbed
    (this is the bookkeeping around them, the real path runs in the Kafka tests)."""
    ctx = WorkerContext(settings=Settings.from_env(bootstrap_servers="127.0.0.1:1", topic_prefix="t"))
    ctx.topologies = {"m": {"run_id": "r"}}
    monkeypatch.setattr(policy_agent, "_signals_arrived", lambda ctx, record: True)
    monkeypatch.setattr(policy_agent, "_prepare",
                        lambda ctx, record, cfg, pending: SimpleNamespace(outcome=record))
    return ctx


def test_a_parked_outcome_is_released_only_after_its_decision_was_sent(ctx, monkeypatch) -> None:
    sent: list[list[str]] = []
    failing = [True]

    async def send(ctx: Any, outbox: Any, due: dict, cfg: Any, started: float) -> None:
        if failing[0]:
            raise RuntimeError("broker gone")
        sent.append([d.outcome["epoch"] for d, _ in due.values()])

    monkeypatch.setattr(policy_agent, "_send_decisions", send)
    parked, fresh = event(5), event(7)
    try:
        faust_compat.hold_commit(parked)  # as when it was parked (it arrived before its topology)
        ctx.parked_outcomes.park("m", ({"model_id": "m", "run_id": "r", "epoch": 3}, parked))
        ended = [({"model_id": "m", "run_id": "r", "epoch": 4}, fresh, None)]
        with pytest.raises(RuntimeError):
            asyncio.run(policy_agent.decide_and_send(ctx, None, ended))
        # Not sent: the parked outcome is parked again and still holds the commit; the fresh one is
        # the caller's to retry (its batch is not acked), so it is neither parked nor held.
        assert [record["epoch"] for _, (record, _) in ctx.parked_outcomes.release("m")] == [3]
        ctx.parked_outcomes.park("m", ({"model_id": "m", "run_id": "r", "epoch": 3}, parked))
        assert faust_compat.held_messages() == 1
        failing[0] = False
        asyncio.run(policy_agent.decide_and_send(ctx, None, ended))
        assert sent == [[4]]  # one decision for the model: the newest epoch settles the older one
        assert len(ctx.parked_outcomes) == 0 and faust_compat.held_messages() == 0
    finally:
        faust_compat.release_commit([parked, parked])


def test_an_outcome_without_topology_is_held_until_it_expires(ctx, monkeypatch) -> None:
    async def send(ctx: Any, outbox: Any, due: dict, cfg: Any, started: float) -> None:
        assert not due  # a model without topology is never decided

    monkeypatch.setattr(policy_agent, "_send_decisions", send)
    orphan = event(9)
    try:
        record = {"model_id": "x", "run_id": "r", "epoch": 1}
        asyncio.run(policy_agent.decide_and_send(ctx, None, [(record, orphan, 0.0)]))  # deadline long past
        assert "x" in ctx.parked_outcomes and faust_compat.held_messages() == 1
        asyncio.run(policy_agent.decide_and_send(ctx, None, []))
        assert len(ctx.parked_outcomes) == 0 and faust_compat.held_messages() == 0
        assert ctx.counters.skipped_no_topology == 1
    finally:
        faust_compat.release_commit([orphan])


def test_an_outcome_of_a_superseded_run_is_released_undecided(ctx, monkeypatch) -> None:
    async def send(ctx: Any, outbox: Any, due: dict, cfg: Any, started: float) -> None:
        assert not due  # the model moved on to run r2: nothing to decide for r

    monkeypatch.setattr(policy_agent, "_send_decisions", send)
    parked, late = event(11), event(12)
    try:
        faust_compat.hold_commit(parked)  # parked before run r's topology; then r2 replaced r
        ctx.parked_outcomes.park("m", ({"model_id": "m", "run_id": "r", "epoch": 6}, parked))
        ctx.topologies = {"m": {"run_id": "r2", "superseded_runs": ["r"]}}
        asyncio.run(policy_agent.decide_and_send(ctx, None, [({"model_id": "m", "run_id": "r", "epoch": 7}, late, None)]))
        assert len(ctx.parked_outcomes) == 0 and faust_compat.held_messages() == 0
        assert ctx.counters.stale_outcomes == 2 and ctx.counters.skipped_no_topology == 0
    finally:
        faust_compat.release_commit([parked])


@pytest.fixture
def holds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commit holds are per process: the test starts (and leaves the others) without any."""
    monkeypatch.setattr(faust_compat, "_floors", {})


def waiting_outcome(parking: Any, epoch: int, partition: int, deadline: float | None = None) -> Any:
    """Park an epoch outcome of model m, read from ``partition``, holding its commit."""
    held = SimpleNamespace(message=SimpleNamespace(tp=TP("t.outcomes", partition), offset=epoch))
    faust_compat.hold_commit(held)
    parking.park("m", ({"model_id": "m", "run_id": "r", "epoch": epoch}, held), deadline=deadline)
    return held


def test_a_revoke_leaves_what_waits_on_the_revoked_partitions_to_their_next_owner(holds, tmp_path) -> None:
    from streams.factory import create_app
    from streams.intake import Accepted, RawMessage

    app, ctx = create_app(Settings(bootstrap_servers="127.0.0.1:1", topic_prefix="t", data_dir=tmp_path))
    signal = SimpleNamespace(message=SimpleNamespace(tp=TP("t.health", 1), offset=40))
    faust_compat.hold_commit(signal)
    ctx.parked_signals.park("m", Accepted(RawMessage("t.health", 1, 40, b"m", b"", 0, signal), "HealthSignal",
                                          {"model_id": "m"}))
    waiting_outcome(ctx.parked_outcomes, 3, partition=1)
    waiting_outcome(ctx.waiting_for_signals, 4, partition=1)
    kept = waiting_outcome(ctx.parked_outcomes, 5, partition=0)
    asyncio.run(app.on_partitions_revoked.send({TP("t.health", 1), TP("t.outcomes", 1)}))
    assert len(ctx.parked_signals) == len(ctx.waiting_for_signals) == 0
    assert [event for _, (_, event) in ctx.parked_outcomes.release("m")] == [kept]
    assert faust_compat.held_messages() == 1  # the partition kept holds its commit


def test_outcomes_of_partitions_not_owned_are_dropped_not_decided(ctx, monkeypatch, holds) -> None:
    sent: list[list[int]] = []

    async def send(ctx: Any, outbox: Any, due: dict, cfg: Any, started: float) -> None:
        sent.extend([[d.outcome["epoch"] for d, _ in due.values()]] if due else [])

    monkeypatch.setattr(policy_agent, "_send_decisions", send)
    monkeypatch.setattr(policy_agent, "active_partitions", lambda app, topic: {0})
    app = SimpleNamespace(rebalancing=True, in_recovery=False, producer=None)
    waiting_outcome(ctx.parked_outcomes, 3, partition=1)  # its partition moved to another worker
    waiting_outcome(ctx.waiting_for_signals, 4, partition=0, deadline=0.0)  # waited long enough
    asyncio.run(policy_agent.decide_waiting(app, ctx, sweep=True))
    assert sent == [] and faust_compat.held_messages() == 2  # tables not recovered yet: nothing done
    app.rebalancing = False
    asyncio.run(policy_agent.decide_waiting(app, ctx, sweep=True))
    assert sent == [[4]]
    assert len(ctx.parked_outcomes) == len(ctx.waiting_for_signals) == 0 and faust_compat.held_messages() == 0


def test_held_outcomes_wait_again_whatever_step_of_a_decision_fails(ctx, monkeypatch, holds) -> None:
    """A decision that fails before its send (a table read, the policy) loses no outcome that waited:
    the decider's next run finds it parked, its commit still held."""
    def broken(ctx: Any, record: dict, cfg: Any, pending: Any) -> Any:
        raise RuntimeError("table read failed")

    monkeypatch.setattr(policy_agent, "_prepare", broken)
    waiting_outcome(ctx.parked_outcomes, 3, partition=0)
    waiting_outcome(ctx.waiting_for_signals, 4, partition=0, deadline=0.0)
    with pytest.raises(RuntimeError):
        asyncio.run(policy_agent.decide_and_send(ctx, None, [], sweep=True))
    assert sorted(event.message.offset for _, (_, event) in ctx.parked_outcomes.release("m")) == [3, 4]
    assert faust_compat.held_messages() == 2


def test_fresh_outcomes_of_a_failed_batch_do_not_wait_twice(ctx, monkeypatch, holds) -> None:
    """The batch is retried, so an outcome of it that started to wait for its signals stops waiting."""
    async def send(ctx: Any, outbox: Any, due: dict, cfg: Any, started: float) -> None:
        raise RuntimeError("broker gone")

    monkeypatch.setattr(policy_agent, "_send_decisions", send)
    monkeypatch.setattr(policy_agent, "_signals_arrived", lambda ctx, record: record["epoch"] != 5)
    fresh = [({"model_id": "m", "run_id": "r", "epoch": 5}, event(21), None),
             ({"model_id": "n", "run_id": "r", "epoch": 2}, event(22), None)]
    ctx.topologies["n"] = {"run_id": "r"}
    with pytest.raises(RuntimeError):
        asyncio.run(policy_agent.decide_and_send(ctx, None, fresh))
    assert len(ctx.waiting_for_signals) == 0 and faust_compat.held_messages() == 0
