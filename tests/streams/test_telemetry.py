"""The telemetry agent's folding and parking, on stand-in tables (the Kafka path runs in the *_kafka tests)."""

from __future__ import annotations

import asyncio
import copy

from streams import policy_agent, telemetry
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
