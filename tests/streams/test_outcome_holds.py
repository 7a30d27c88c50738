"""Epoch outcomes that wait hold their commit until decided; a failed send parks them again."""

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
