"""Telemetry agent: topology and health signals → per-model graph tables (batched, one write per model)."""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import faust

from models.graph import update_layer_aggregate
from streams.archive import archive
from streams.context import WorkerContext
from streams.deadletter import send_dead_letter
from streams.faust_compat import as_current
from streams.intake import Accepted, Rejected, accept, from_faust_event
from streams.outbox import Outbox

log = logging.getLogger(__name__)

TOPOLOGY = frozenset({"ModelTopology"})
HEALTH = frozenset({"HealthSignal"})


def register(app: faust.App, ctx: WorkerContext) -> Any:
    settings = ctx.settings
    topics = settings.topics
    source = app.topic(topics.topology, topics.health, key_serializer="raw", value_serializer="raw")

    @app.agent(source, name="telemetry")
    async def telemetry(stream: Any) -> None:
        async for events in stream.take_events(settings.policy_batch_max * 4, within=0.05):
            outbox = Outbox(app.producer)
            await process_batch(ctx, outbox, [from_faust_event(e) for e in events])
            await outbox.flush()

    return telemetry


async def process_batch(ctx: WorkerContext, outbox: Outbox, messages: list) -> None:
    """Validate, archive or dead-letter each message; fold signals into one table write per model."""
    settings = ctx.settings
    topics = settings.topics
    # Topology first, so a model's signals in the same batch find it.
    messages = sorted(messages, key=lambda m: m.topic != topics.topology)
    by_model: dict[str, list[dict]] = defaultdict(list)
    events: dict[str, Any] = {}
    for raw in messages:
        expected = TOPOLOGY if raw.topic == topics.topology else HEALTH
        result = accept(raw, expected, settings.max_message_bytes)
        if isinstance(result, Accepted) and result.name == "HealthSignal":
            result = _check_against_topology(ctx, result)
        if isinstance(result, Rejected):
            ctx.counters.dead_letters += 1
            await send_dead_letter(outbox, topics.deadletter, result, settings.dead_letter_value_bytes)
            continue
        await archive(outbox, topics.experience, result.name, raw)
        ctx.counters.archived += 1
        if result.name == "ModelTopology":
            with as_current(raw.event):
                ctx.topologies[result.record["model_id"]] = result.record
            ctx.counters.topologies += 1
        else:
            by_model[result.record["model_id"]].append(result.record)
            events[result.record["model_id"]] = raw.event
            ctx.counters.health_signals += 1
    for model_id, signals in by_model.items():
        with as_current(events[model_id]):
            _fold_signals(ctx, model_id, signals)
    if ctx.metrics is not None:
        ctx.metrics.observe_counters(ctx.counters)


def _check_against_topology(ctx: WorkerContext, accepted: Accepted) -> Accepted | Rejected:
    record = accepted.record
    topology = ctx.topologies.get(record["model_id"])
    if not topology:
        return Rejected(accepted.raw, "unknown_model", f"no topology for model {record['model_id']!r}")
    if record["layer_name"] not in {layer["name"] for layer in topology["layers"]}:
        return Rejected(accepted.raw, "unknown_layer",
                        f"layer {record['layer_name']!r} is not in the topology of {record['model_id']!r}")
    return accepted


def window_at(ctx: WorkerContext, timestamp_s: float) -> Any:
    """The graphs table seen at an event time (windows follow the hosts' timestamps)."""
    return ctx.graphs.relative_to(timestamp_s)


def _fold_signals(ctx: WorkerContext, model_id: str, signals: list[dict]) -> None:
    timestamp_s = max(s["timestamp_ms"] for s in signals) / 1000.0
    table = window_at(ctx, timestamp_s)
    state = dict(table[model_id].current() or {})
    layers = dict(state.get("layers", {}))
    last = signals[-1]
    if state.get("run_id") not in (None, last["run_id"]):
        layers = {}  # a new run starts a fresh graph
    for signal in signals:
        if signal["run_id"] != last["run_id"]:
            continue
        layers[signal["layer_name"]] = update_layer_aggregate(layers.get(signal["layer_name"]), signal)
    table[model_id] = {"run_id": last["run_id"], "epoch": max(s["epoch"] for s in signals), "layers": layers}
