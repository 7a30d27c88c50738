"""Telemetry agent: topology and health signals → per-model graph tables (batched, one write per model)."""

from __future__ import annotations

import logging
from typing import Any

import faust

from models.batch_aggregates import fold_batch
from models.graph import update_layer_aggregate
from schemas.health_batch import batch_size
from streams.archive import archive
from streams.context import WorkerContext
from streams.deadletter import send_dead_letter
from streams.faust_compat import as_current, hold_commit, release_commit
from streams.intake import Accepted, Rejected, accept, from_faust_event
from streams.outbox import Outbox
from streams.resilience import process_safely

log = logging.getLogger(__name__)

#: How long a telemetry batch may wait to fill. The policy agent waits for an epoch's signals to be
#: folded before deciding, so this window is part of decision latency: hosts send an epoch's
#: HealthBatch just before its EpochOutcome, so the decision waits for it (measured at 1,000 models:
#: p50 14 ms, p99 25-46 ms with 10 ms; p50 8 ms, p99 13-17 ms with 5 ms). Under a backlog a shorter
#: window only means smaller batches (ingest measured no different at 2, 5 and 10 ms).
BATCH_WITHIN_S = 0.005

TOPOLOGY = frozenset({"ModelTopology"})
HEALTH = frozenset({"HealthSignal", "HealthReport", "HealthBatch"})


def register(app: faust.App, ctx: WorkerContext) -> Any:
    settings = ctx.settings
    topics = settings.topics
    source = app.topic(topics.topology, topics.health, key_serializer="raw", value_serializer="raw")

    @app.timer(interval=1.0)
    async def sweep_parked() -> None:
        if len(ctx.parked_signals):
            outbox = Outbox(app.producer)
            resolved = await expire_parked(ctx, outbox)
            await outbox.flush()
            release_commit(resolved)

    @app.agent(source, name="telemetry")
    async def telemetry(stream: Any) -> None:
        async for events in stream.take_events(settings.policy_batch_max * 4, within=BATCH_WITHIN_S):
            await process_safely(ctx, app.producer, process_batch, [from_faust_event(e) for e in events])

    return telemetry


async def process_batch(ctx: WorkerContext, outbox: Outbox, messages: list) -> None:
    """Validate, archive or dead-letter each message; fold signals into one table write per model."""
    settings = ctx.settings
    topics = settings.topics
    # Topology first, so a model's signals in the same batch find it.
    messages = sorted(messages, key=lambda m: m.topic != topics.topology)
    folds: dict[str, tuple[Any, list[dict]]] = {}
    topologies_before = ctx.counters.topologies
    resolved: list[Any] = []  # events of parked signals handled here: their commit hold ends after delivery
    for raw in messages:
        expected = TOPOLOGY if raw.topic == topics.topology else HEALTH
        result = accept(raw, expected, settings.max_message_bytes)
        if isinstance(result, Rejected):
            await _reject(ctx, outbox, result)
        elif result.name == "ModelTopology":
            model_id = result.record["model_id"]
            await archive(ctx, outbox, result.name, raw)
            with as_current(raw.event):
                stored = store_topology(ctx, result.record)
            if not stored:
                ctx.counters.stale_topologies += 1
                continue
            ctx.counters.topologies += 1
            for deadline, parked in ctx.parked_signals.release(model_id):
                if has_topology_for(ctx, parked.record):
                    await _signal(ctx, outbox, parked, folds, event=raw.event)
                    resolved.append(parked.raw.event)
                elif run_superseded(ctx, parked.record):
                    await _stale_signal(ctx, outbox, parked)
                    resolved.append(parked.raw.event)
                else:
                    ctx.parked_signals.park(model_id, parked, deadline=deadline)
        elif not has_topology_for(ctx, result.record):
            if run_superseded(ctx, result.record):
                await _stale_signal(ctx, outbox, result)
            elif not ctx.parked_signals.park(result.record["model_id"], result):
                await _reject(ctx, outbox, Rejected(raw, "unknown_model", "no topology for run "
                                                    f"{result.record['run_id']!r} (parking is full)"))
            else:
                hold_commit(raw.event)  # acked with its batch, but not handled: never commit past it
        else:
            await _signal(ctx, outbox, result, folds, event=raw.event)
    for model_id, (event, signals) in folds.items():
        with as_current(event):
            _fold_signals(ctx, model_id, signals)
    touched = [model_id for model_id in folds if model_id in ctx.waiting_for_signals]
    if touched or (ctx.counters.topologies != topologies_before and ctx.parked_outcomes):
        ctx.folded.update(touched)
        ctx.wake_decider.set()
    resolved += await expire_parked(ctx, outbox)
    if resolved:
        await outbox.flush()
        release_commit(resolved)


def has_topology_for(ctx: WorkerContext, record: dict) -> bool:
    """True when the model's latest topology belongs to the record's run (runs change layers)."""
    topology = ctx.topologies.get(record["model_id"])
    return bool(topology) and topology["run_id"] == record["run_id"]


#: Runs per model remembered as superseded (stored with the topology, so in its changelog too).
SUPERSEDED_RUNS = 8


def store_topology(ctx: WorkerContext, record: dict) -> bool:
    """Make ``record`` its model's topology, remembering the run it replaces as superseded.

    Returns False, and keeps the current topology, for a topology of a superseded run: topologies
    arrive in order on their topic, so that is a duplicate re-read after a restart, or a host
    that went back to an old run id. Must run with the message's event current (a table write).
    """
    model_id = record["model_id"]
    current = ctx.topologies.get(model_id)
    superseded = list(current.get("superseded_runs", ())) if current else []
    if record["run_id"] in superseded:
        return False
    if current and current["run_id"] != record["run_id"]:
        superseded = (superseded + [current["run_id"]])[-SUPERSEDED_RUNS:]
    ctx.topologies[model_id] = record | {"superseded_runs": superseded} if superseded else record
    return True


def run_superseded(ctx: WorkerContext, record: dict) -> bool:
    """True when the record's run was replaced by a newer run of its model (a late message).

    Health and topology are separate topics: under a backlog a run's last signals can be read
    after the next run's topology. They must not be folded (a graph holds one run) nor wait for a
    topology that will not come."""
    topology = ctx.topologies.get(record["model_id"])
    return bool(topology) and record["run_id"] in topology.get("superseded_runs", ())


async def expire_parked(ctx: WorkerContext, outbox: Outbox) -> list[Any]:
    """Dead-letter signals whose model never published a topology; returns their events."""
    expired = ctx.parked_signals.expired()
    for accepted in expired:
        model_id = accepted.record["model_id"]
        run_id = accepted.record["run_id"]
        await _reject(ctx, outbox, Rejected(accepted.raw, "unknown_model",
                                            f"no topology for model {model_id!r} run {run_id!r} within "
                                            f"{ctx.parked_signals.ttl_s:.0f}s"))
    return [accepted.raw.event for accepted in expired]


async def _reject(ctx: WorkerContext, outbox: Outbox, rejected: Rejected) -> None:
    ctx.counters.dead_letters += 1
    settings = ctx.settings
    await send_dead_letter(outbox, settings.topics.deadletter, rejected, settings.dead_letter_value_bytes)


_layer_names: dict[str, tuple[Any, frozenset[str]]] = {}


def layer_names_of(model_id: str, topology: dict) -> frozenset[str]:
    """The layer names of a topology record, computed once per topology object (not per signal)."""
    cached = _layer_names.get(model_id)
    if cached is not None and cached[0] is topology:
        return cached[1]
    names = frozenset(layer["name"] for layer in topology["layers"])
    if len(_layer_names) >= 100_000:
        _layer_names.clear()
    _layer_names[model_id] = (topology, names)
    return names


def signals_of(accepted: Accepted) -> list[dict]:
    """What a health message adds to its model's fold: its HealthSignal, a HealthReport's signals, or
    a HealthBatch whole (folded by columns; it has ``layer_names``, a signal has ``layer_name``)."""
    if accepted.name == "HealthReport":
        return accepted.record["signals"]
    return [accepted.record]


def signal_count(accepted: Accepted) -> int:
    """The HealthSignals a health message carries."""
    if accepted.name == "HealthBatch":
        return batch_size(accepted.record)
    return len(accepted.record["signals"]) if accepted.name == "HealthReport" else 1


def layers_named(accepted: Accepted) -> list[str]:
    """The layer names a health message reports on."""
    if accepted.name == "HealthBatch":
        return accepted.record["layer_names"]
    return [signal["layer_name"] for signal in signals_of(accepted)]


async def _stale_signal(ctx: WorkerContext, outbox: Outbox, accepted: Accepted) -> None:
    """Archive the signals of a superseded run (they are experience) without folding them."""
    await archive(ctx, outbox, accepted.name, accepted.raw)
    ctx.counters.stale_signals += signal_count(accepted)


async def _signal(ctx: WorkerContext, outbox: Outbox, accepted: Accepted,
                  folds: dict[str, tuple[Any, list[dict]]], event: Any) -> None:
    """Archive one health message and queue its signals for folding; a report or batch with a layer
    the topology does not know is dead-lettered whole."""
    model_id = accepted.record["model_id"]
    known = layer_names_of(model_id, ctx.topologies.get(model_id))
    for layer in layers_named(accepted):
        if layer not in known:
            await _reject(ctx, outbox, Rejected(accepted.raw, "unknown_layer", f"layer {layer!r} "
                                                f"is not in the topology of {model_id!r}"))
            return
    await archive(ctx, outbox, accepted.name, accepted.raw)
    ctx.counters.health_signals += signal_count(accepted)
    folds.setdefault(model_id, (event, []))[1].extend(signals_of(accepted))


def window_at(ctx: WorkerContext, timestamp_s: float) -> Any:
    """The graphs table seen at an event time (windows follow the hosts' timestamps).

    Always a float: Faust's ``relative_to`` raises ``ImproperlyConfigured`` for an int.
    """
    return ctx.graphs.relative_to(float(timestamp_s))


def _latest_ms(part: dict) -> int:
    return max(part["timestamp_ms"]) if "layer_names" in part else part["timestamp_ms"]


def _fold_signals(ctx: WorkerContext, model_id: str, parts: list[dict]) -> None:
    """Fold HealthSignals and HealthBatches (``signals_of``), in arrival order, into the model's window."""
    timestamp_s = max(_latest_ms(p) for p in parts) / 1000.0
    table = window_at(ctx, timestamp_s)
    state = dict(table[model_id].value() or {})
    layers = dict(state.get("layers", {}))
    run_id = parts[-1]["run_id"]
    epoch = state.get("epoch", -1)
    if state.get("run_id") not in (None, run_id):
        layers, epoch = {}, -1  # a new run starts a fresh graph
    for part in parts:
        if part["run_id"] != run_id:
            continue
        if "layer_names" in part:
            fold_batch(layers, part)
            epoch = max(epoch, max(part["epoch"]))
        else:
            layers[part["layer_name"]] = update_layer_aggregate(layers.get(part["layer_name"]), part)
            epoch = max(epoch, part["epoch"])
    # The newest epoch seen in this window, not just in this batch: the window-close trigger decides
    # the epoch before it.
    table[model_id] = {"run_id": run_id, "epoch": epoch, "layers": layers}
