"""A decision's gate state, with its encoded messages, reaches Kafka before the messages; an epoch
decided before a crash sends those same bytes again instead of a new decision (the Kafka part runs
in the chaos worker-crash scenario)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest

from models.heuristic import ThresholdHeuristic
from schemas import decode
from streams import policy_agent
from streams.context import WorkerContext
from streams.decisions import PENDING, fresh_gate, pending_messages, prepare, undelivered
from streams.faust_compat import PartitionEvent
from tamiyo.config import Settings
from tests.samples import SAMPLES
from tests.streams.test_decisions import CFG, TOPOLOGY, window

OUTCOME = dict(SAMPLES["EpochOutcome"], epoch=3, run_id="run-1")
MODEL = OUTCOME["model_id"]


class Log(list):
    """What happened, in order: gate writes, producer flushes, sends."""


class Gates(dict):
    """A table whose writes send a changelog record, acknowledged when awaited (as Faust's)."""

    def __init__(self, log: Log) -> None:
        super().__init__()
        self.log = log

    def __setitem__(self, key: str, value: Any) -> None:
        self.log.append(("gate", key))
        super().__setitem__(key, value)
        self.send_changelog(0, key, value)

    def send_changelog(self, partition: int, key: str, value: Any) -> Any:
        async def acked() -> None:
            self.log.append(("changelog acked", key))
        return asyncio.ensure_future(acked())


class FakeOutbox:
    def __init__(self, log: Log) -> None:
        self.log = log
        self.sent: list[tuple[str, bytes]] = []

    async def send(self, topic: str, key: bytes, value: bytes, headers: Any = None) -> None:
        self.log.append(("send", topic))
        self.sent.append((topic, value))

    async def flush(self) -> int:
        self.log.append(("flush",))
        return len(self.sent)


def worker(log: Log, gates: dict | None = None) -> WorkerContext:
    ctx = WorkerContext(settings=Settings.from_env(bootstrap_servers="127.0.0.1:1", topic_prefix="t"))
    ctx.gate_state = Gates(log)
    dict.update(ctx.gate_state, gates or {})
    policy = ThresholdHeuristic()
    ctx.policy = SimpleNamespace(serving=SimpleNamespace(model=policy, version=policy.version))
    ctx.topologies = {MODEL: dict(TOPOLOGY, run_id="run-1")}
    return ctx


def decide_once(log: Log) -> tuple[WorkerContext, FakeOutbox]:
    ctx, outbox = worker(log), FakeOutbox(log)
    item = prepare(OUTCOME, TOPOLOGY, [window(3, ["DORMANT", "DORMANT"])], None, CFG)
    assert item is not None
    due = {MODEL: (item, PartitionEvent("t.outcomes", 0))}
    asyncio.run(policy_agent._send_decisions(ctx, outbox, due, CFG, time.perf_counter()))
    return ctx, outbox


def test_the_gate_state_with_the_messages_is_in_kafka_before_the_messages_are_sent() -> None:
    log = Log()
    ctx, outbox = decide_once(log)
    topics = ctx.settings.topics
    assert log == [("gate", MODEL), ("changelog acked", MODEL), ("send", topics.experience),
                   ("send", topics.commands), ("flush",)]
    gate = ctx.gate_state[MODEL]
    assert gate["last_decided_epoch"] == 3
    record, command = pending_messages(gate[PENDING])
    assert [(topics.experience, record), (topics.commands, command)] == outbox.sent  # the very bytes
    assert decode(command).value["decision_id"] == gate[PENDING]["decision_id"] == decode(record).value["decision_id"]
    assert ctx.counters.decisions == 1 and ctx.counters.commands_sent == 1


def test_an_outcome_read_again_after_a_crash_resends_the_stored_decision_not_a_new_one(monkeypatch) -> None:
    first_log = Log()
    first, first_outbox = decide_once(first_log)
    # A new process (nothing delivered yet, as far as it knows) with the gate state the changelog kept.
    # Its tables moved on: the host applied the command, and a new decision would differ.
    log = Log()
    ctx, outbox = worker(log, {MODEL: first.gate_state[MODEL]}), FakeOutbox(log)
    moved_on = window(4, ["TRAINING", "DORMANT"])
    monkeypatch.setattr(policy_agent, "_window_and_previous", lambda ctx, model_id, at_s: [moved_on])
    monkeypatch.setattr(policy_agent, "_signals_arrived", lambda ctx, record: True)
    asyncio.run(policy_agent.decide_and_send(ctx, outbox, [(OUTCOME, PartitionEvent("t.outcomes", 0), None)]))
    assert outbox.sent == first_outbox.sent
    assert ("gate", MODEL) not in log  # the epoch was decided: no new gate state
    assert ctx.counters.decisions_resent == 1 and ctx.counters.decisions == 0
    # Read once more by the same process: delivered already, nothing is sent.
    asyncio.run(policy_agent.decide_and_send(ctx, outbox, [(OUTCOME, PartitionEvent("t.outcomes", 0), None)]))
    assert len(outbox.sent) == 2 and ctx.counters.decisions_resent == 1


def test_the_next_epoch_is_decided_normally_and_never_inherits_the_stored_messages() -> None:
    log = Log()
    ctx, _ = decide_once(log)
    gate = ctx.gate_state[MODEL]
    assert PENDING not in fresh_gate(gate, "run-1")
    assert undelivered(gate, MODEL, "run-1", 3) is gate[PENDING]
    assert undelivered(gate, MODEL, "run-1", 4) is None
    assert undelivered(gate, MODEL, "run-2", 3) is None
    item = prepare(dict(OUTCOME, epoch=5), TOPOLOGY, [window(5, ["TRAINING", "DORMANT"])], gate, CFG)
    assert item is not None and PENDING not in item.gate


@pytest.mark.parametrize("capacity", [4])
def test_recent_ids_forget_the_oldest_half_at_capacity(capacity: int) -> None:
    from streams.context import RecentIds

    ids = RecentIds(capacity)
    for i in range(capacity + 1):
        ids.add(str(i))
    assert len(ids) == capacity + 1 - (capacity + 1) // 2
    assert "0" not in ids and str(capacity) in ids
