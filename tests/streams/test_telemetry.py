"""The telemetry agent's folding and parking, on stand-in tables (the Kafka path runs in the *_kafka tests)."""

from __future__ import annotations

import asyncio
import copy

import pytest

from streams import faust_compat, policy_agent, telemetry
from streams.intake import accept
from streams.outbox import Outbox
from streams.resilience import process_safely
from tests.samples import SAMPLES
from tests.streams.fakes import Producer, message, worker_context

T0 = 1_700_000_000_000  # a window boundary (a multiple of the 10 s window)


def health_batch(epoch: int, step: int, timestamp_ms: int) -> dict:
    """A HealthBatch of two reports of one epoch, 100 ms apart."""
    return copy.deepcopy(SAMPLES["HealthBatch"]) | {"epoch": [epoch, epoch], "step": [step, step + 1],
                                                    "timestamp_ms": [timestamp_ms, timestamp_ms + 100]}


def run(ctx, producer: Producer, *messages) -> None:  # type: ignore[no-untyped-def]
    asyncio.run(process_safely(ctx, producer, telemetry.process_batch, list(messages)))


def window(ctx, start_ms: int) -> dict:  # type: ignore[no-untyped-def]
    """The model's window that starts at ``start_ms``: layer -> (epoch, step, count)."""
    state = ctx.graphs.data[("m-1", start_ms / 1000)]
    return {name: (a["epoch"], a["step"], a["count"]) for name, a in state["layers"].items()} | \
        {"epoch": state["epoch"]}


def test_each_message_is_folded_into_its_own_window() -> None:
    """Epoch 5's reports end 0.4 s before a window boundary, epoch 6's start after it, and one batch
    reads both: epoch 5 stays in its window, where its outcome's decision looks for it."""
    ctx = worker_context()
    run(ctx, Producer(), message("t.topology", "ModelTopology", SAMPLES["ModelTopology"], 0))
    run(ctx, Producer(), message("t.health", "HealthBatch", health_batch(5, 500, T0 + 9_500), 1),
        message("t.health", "HealthBatch", health_batch(6, 600, T0 + 10_200), 2))
    assert window(ctx, T0) == {"layers.0": (5, 501, 2), "layers.1": (5, 501, 2), "epoch": 5}
    assert window(ctx, T0 + 10_000) == {"layers.0": (6, 601, 2), "layers.1": (6, 601, 2), "epoch": 6}
    assert len(ctx.graphs.writes) == 2  # one write per model and window
    outcome = dict(SAMPLES["EpochOutcome"], epoch=5, timestamp_ms=T0 + 9_700, last_report_step=501)
    assert policy_agent._signals_arrived(ctx, outcome)


@pytest.fixture(autouse=True)
def _no_commit_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commit holds are per process: each test starts (and leaves the others) without any."""
    monkeypatch.setattr(faust_compat, "_floors", {})


def counts(ctx) -> dict:  # type: ignore[no-untyped-def]
    """Signals folded per window and layer."""
    return {(model, start): {name: a["count"] for name, a in state["layers"].items()}
            for (model, start), state in ctx.graphs.data.items()}


def test_a_batch_retried_after_a_failed_delivery_is_folded_once() -> None:
    """The first delivery of the batch fails: it is retried one message at a time, and neither its
    signals nor the one it parked (model m-2 has no topology yet) count twice."""
    ctx = worker_context()
    run(ctx, Producer(), message("t.topology", "ModelTopology", SAMPLES["ModelTopology"], 0))
    orphan = health_batch(3, 120, T0) | {"model_id": "m-2"}
    run(ctx, Producer(failures=1), message("t.health", "HealthBatch", health_batch(3, 120, T0), 1),
        message("t.health", "HealthBatch", orphan, 2))
    assert counts(ctx) == {("m-1", T0 / 1000): {"layers.0": 2, "layers.1": 2}}
    assert ctx.counters.health_signals == 4
    assert len(ctx.parked_signals) == 1 and faust_compat.held_messages() == 1


def test_signals_released_by_a_topology_stay_parked_when_its_batch_fails() -> None:
    """A HealthBatch waits for its topology; the topology's batch fails once. The retry folds the signals
    once and ends their commit hold: nothing stays held for the life of the process."""
    ctx = worker_context()
    run(ctx, Producer(), message("t.health", "HealthBatch", health_batch(3, 120, T0), 10))
    assert len(ctx.parked_signals) == 1 and faust_compat.held_messages() == 1
    run(ctx, Producer(failures=1), message("t.topology", "ModelTopology", SAMPLES["ModelTopology"], 3))
    assert counts(ctx) == {("m-1", T0 / 1000): {"layers.0": 2, "layers.1": 2}}
    assert len(ctx.parked_signals) == 0 and faust_compat.held_messages() == 0


def test_expired_signals_whose_dead_letter_fails_stay_parked_and_held() -> None:
    """The sweep's dead letter for a signal that never got its topology is not delivered: the signal
    is parked again, its commit still held, and the next sweep dead-letters it."""
    ctx = worker_context()
    parked = accept(message("t.health", "HealthBatch", health_batch(3, 120, T0), 10), telemetry.HEALTH, 10**6)
    ctx.parked_signals.park("m-1", parked, deadline=0.0)  # its deadline has passed
    faust_compat.hold_commit(parked.raw.event)
    with pytest.raises(RuntimeError):
        asyncio.run(telemetry.expire_parked(ctx, Outbox(Producer(failures=1))))
    assert len(ctx.parked_signals) == 1 and faust_compat.held_messages() == 1
    producer = Producer()
    asyncio.run(telemetry.expire_parked(ctx, Outbox(producer)))
    assert [topic for topic, _, _ in producer.sent] == ["t.deadletter"]
    assert len(ctx.parked_signals) == 0 and faust_compat.held_messages() == 0
