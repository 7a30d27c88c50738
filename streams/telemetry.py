"""Telemetry agent: topology and health signals → per-model graph tables (batched, one write per model)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
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
from streams.resilience import TaskErrors, process_safely

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

    sweep_errors = TaskErrors(ctx, "dead-lettering expired signals")

    @app.timer(interval=1.0)
    async def sweep_parked() -> None:
        if len(ctx.parked_signals):
            try:
                await expire_parked(ctx, Outbox(app.producer))
            except Exception:  # the signals are parked again, still held
                sweep_errors.failed()

    @app.agent(source, name="telemetry")
    async def telemetry(stream: Any) -> None:
        async for events in stream.take_events(settings.policy_batch_max * 4, within=BATCH_WITHIN_S):
            await process_safely(ctx, app.producer, process_batch, [from_faust_event(e) for e in events])

    return telemetry


@dataclass
class _Effects:
    """What one telemetry batch changes besides its output, undone when that output is not delivered.

    A batch that fails is retried one message at a time (``process_safely``): had its folds, parking
    and the parked signals it took out stayed, the retry would fold signals twice, park them twice, or
    lose the parked ones with their commit holds. Folds are written before the delivery (the decider
    waits for them; waiting for the archive's acknowledgement too would add to every decision's
    latency) and written back to what they replaced on a failure; commit holds change only after the
    delivery. Topologies are stored at once (later messages of the batch need them): storing one
    again stores the same value.
    """

    folds: dict[str, tuple[Any, list[dict]]] = field(default_factory=dict)  # model -> (event, signals)
    signals: int = 0  # HealthSignals in ``folds``
    parked: list[Accepted] = field(default_factory=list)  # parked by this batch (their commits held after it)
    taken: list[tuple[float, Accepted]] = field(default_factory=list)  # out of parking: (deadline, signal)
    replaced: list[tuple[Any, str, float, dict]] = field(default_factory=list)  # (event, model, time, old entry)


async def process_batch(ctx: WorkerContext, outbox: Outbox, messages: list) -> None:
    """Validate, archive or dead-letter each message; fold signals into one table write per model and window."""
    effects = _Effects()
    topologies_before = ctx.counters.topologies
    try:
        await _take_in(ctx, outbox, messages, effects)
        _write_folds(ctx, effects)
        touched = [model_id for model_id in effects.folds if model_id in ctx.waiting_for_signals]
        if touched or (ctx.counters.topologies != topologies_before and ctx.parked_outcomes):
            ctx.folded.update(touched)
            ctx.wake_decider.set()
        await expire_parked(ctx, outbox)  # delivers the whole batch's output
    except BaseException:
        _undo(ctx, effects)
        raise
    _settle(ctx, effects)


def _write_folds(ctx: WorkerContext, effects: _Effects) -> None:
    """Fold the batch's signals into their windows, remembering each entry replaced (for ``_undo``)."""
    for model_id, (event, signals) in effects.folds.items():
        with as_current(event):
            for timestamp_s, old, new in _fold_signals(ctx, model_id, signals):
                window_at(ctx, timestamp_s)[model_id] = new
                effects.replaced.append((event, model_id, timestamp_s, old))


def _settle(ctx: WorkerContext, effects: _Effects) -> None:
    """Once the batch's output is delivered: count its signals, hold the commits of the signals it
    parked, end those of the ones it handled."""
    ctx.counters.health_signals += effects.signals
    for accepted in effects.parked:
        hold_commit(accepted.raw.event)  # acked with its batch, but not handled: never commit past it
    release_commit([accepted.raw.event for _, accepted in effects.taken])


def _undo(ctx: WorkerContext, effects: _Effects) -> None:
    """After a failure: write back the window entries the folds replaced (newest first), unpark what
    the batch parked (its retry parks it again), put back what it took out of parking."""
    for event, model_id, timestamp_s, old in reversed(effects.replaced):
        with as_current(event):
            window_at(ctx, timestamp_s)[model_id] = old
    parked = {id(accepted) for accepted in effects.parked}
    for model_id in {accepted.record["model_id"] for accepted in effects.parked}:
        ctx.parked_signals.release(model_id, when=lambda item: id(item) in parked)
    _put_back(ctx, effects.taken)


def _put_back(ctx: WorkerContext, taken: list[tuple[float, Accepted]]) -> None:
    """Return signals taken out of parking, for work that failed, in arrival order (their commits are still held)."""
    by_model: dict[str, list[tuple[float, Accepted]]] = {}
    for deadline, accepted in taken:
        by_model.setdefault(accepted.record["model_id"], []).append((deadline, accepted))
    for model_id, items in by_model.items():
        ctx.parked_signals.restore(model_id, items)


async def _take_in(ctx: WorkerContext, outbox: Outbox, messages: list, effects: _Effects) -> None:
    """Validate each message, then archive, dead-letter, fold or park it (into ``effects``)."""
    settings = ctx.settings
    topics = settings.topics
    # Topology first, so a model's signals in the same batch find it.
    for raw in sorted(messages, key=lambda m: m.topic != topics.topology):
        result = accept(raw, TOPOLOGY if raw.topic == topics.topology else HEALTH, settings.max_message_bytes)
        if isinstance(result, Rejected):
            await _reject(ctx, outbox, result)
        elif result.name == "ModelTopology":
            await _topology(ctx, outbox, result, effects)
        elif has_topology_for(ctx, result.record):
            await _signal(ctx, outbox, result, effects, event=raw.event)
        elif run_superseded(ctx, result.record):
            await _stale_signal(ctx, outbox, result)
        elif ctx.parked_signals.park(result.record["model_id"], result):
            effects.parked.append(result)
        else:
            await _reject(ctx, outbox, Rejected(raw, "unknown_model", "no topology for run "
                                                f"{result.record['run_id']!r} (parking is full)"))


async def _topology(ctx: WorkerContext, outbox: Outbox, accepted: Accepted, effects: _Effects) -> None:
    """Archive and store a topology; handle the signals that waited for it (or whose run it replaced)."""
    raw = accepted.raw
    await archive(ctx, outbox, accepted.name, raw)
    with as_current(raw.event):
        stored = store_topology(ctx, accepted.record)
    if not stored:
        ctx.counters.stale_topologies += 1
        return
    ctx.counters.topologies += 1
    ready = ctx.parked_signals.release(accepted.record["model_id"],
                                       when=lambda parked: has_topology_for(ctx, parked.record)
                                       or run_superseded(ctx, parked.record))
    effects.taken += ready
    for _, parked in ready:
        if has_topology_for(ctx, parked.record):
            await _signal(ctx, outbox, parked, effects, event=raw.event)
        else:
            await _stale_signal(ctx, outbox, parked)


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


#: The deadline of an expired signal put back because its dead letter was not delivered.
EXPIRED = 0.0


async def expire_parked(ctx: WorkerContext, outbox: Outbox) -> None:
    """Dead-letter the parked signals that expired and end their commit holds; when that fails, they
    go back to parking (still held) for the next sweep."""
    expired = ctx.parked_signals.expired()
    try:
        await _dead_letter_expired(ctx, outbox, expired)
        await outbox.flush()
    except BaseException:
        _put_back(ctx, [(EXPIRED, accepted) for accepted in expired])
        raise
    release_commit([accepted.raw.event for accepted in expired])


async def _dead_letter_expired(ctx: WorkerContext, outbox: Outbox, expired: list[Accepted]) -> None:
    """Dead-letter signals whose model never published a topology (taken out of parking)."""
    for accepted in expired:
        model_id = accepted.record["model_id"]
        run_id = accepted.record["run_id"]
        await _reject(ctx, outbox, Rejected(accepted.raw, "unknown_model",
                                            f"no topology for model {model_id!r} run {run_id!r} within "
                                            f"{ctx.parked_signals.ttl_s:.0f}s"))


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


async def _signal(ctx: WorkerContext, outbox: Outbox, accepted: Accepted, effects: _Effects, event: Any) -> None:
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
    effects.signals += signal_count(accepted)
    effects.folds.setdefault(model_id, (event, []))[1].extend(signals_of(accepted))


def window_at(ctx: WorkerContext, timestamp_s: float) -> Any:
    """The graphs table seen at an event time (windows follow the hosts' timestamps).

    Always a float: Faust's ``relative_to`` raises ``ImproperlyConfigured`` for an int.
    """
    return ctx.graphs.relative_to(float(timestamp_s))


def _latest_ms(part: dict) -> int:
    return max(part["timestamp_ms"]) if "layer_names" in part else part["timestamp_ms"]


def _fold_signals(ctx: WorkerContext, model_id: str, parts: list[dict]) -> list[tuple[float, dict, dict]]:
    """Fold HealthSignals and HealthBatches (``signals_of``), in arrival order, each into the window of
    its own (latest) timestamp; returns per window a time in it and the model's entry there before
    and after (not written).

    A batch of the telemetry agent may hold an epoch's last reports and the next epoch's first ones on
    either side of a window boundary; the decision on that epoch reads its outcome's window and the
    one before, so each part must stay in its own window."""
    by_window: dict[float, list[dict]] = {}
    for part in parts:
        timestamp_s = _latest_ms(part) / 1000.0
        by_window.setdefault(timestamp_s // ctx.settings.window_seconds, []).append(part)
    return [_fold_window(ctx, model_id, window_parts) for window_parts in by_window.values()]


def _fold_window(ctx: WorkerContext, model_id: str, parts: list[dict]) -> tuple[float, dict, dict]:
    """Fold ``parts``, all of one window and in arrival order, into the model's entry of that window:
    (a time in the window, the entry before, the entry after; not written)."""
    timestamp_s = _latest_ms(parts[-1]) / 1000.0
    old = window_at(ctx, timestamp_s)[model_id].value() or {}
    state = dict(old)
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
    return timestamp_s, old, {"run_id": run_id, "epoch": epoch, "layers": layers}
