"""Policy agent: when a model's epoch ends or its telemetry window closes, decide (batched across
models), archive, command."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import faust
from aiokafka.partitioner import murmur2
from faust.types import TP

from schemas import encode
from streams import window_close
from streams.archive import archive, provenance
from streams.context import WorkerContext
from streams.deadletter import send_dead_letter
from streams.decisions import DueModel, decide, follow_host, gate_config, last_decided_epoch, prepare
from streams.faust_compat import (PartitionEvent, active_partitions, as_current, highwater_and_committed, hold_commit,
                                  release_commit, tables_settled)
from streams.intake import Accepted, accept, from_faust_event
from streams.outbox import Outbox
from streams.resilience import process_safely
from streams.telemetry import has_topology_for, run_superseded, window_at

log = logging.getLogger(__name__)

OUTCOMES = frozenset({"EpochOutcome", "CommandOutcome"})
POLL_S = 0.1  # the decider's fallback poll; it is normally woken by the telemetry agent
WINDOW_CLOSE_TICK_S = 0.5


def register(app: faust.App, ctx: WorkerContext) -> Any:
    settings = ctx.settings
    source = app.topic(settings.topics.outcomes, key_serializer="raw", value_serializer="raw")
    # The timer and the agent both decide; a decision's gate state is written only after delivery, so
    # two concurrent deciders would both read the old gate (same layer adapted in consecutive epochs).
    deciding = asyncio.Lock()

    @app.task
    async def decide_parked() -> None:
        """Decide outcomes that waited for their signals or topology: woken by the telemetry agent
        as soon as it folded some, and every POLL_S anyway (waits that time out, parking that expires)."""
        last_sweep = time.monotonic()
        while not app.should_stop:
            try:
                await asyncio.wait_for(ctx.wake_decider.wait(), timeout=POLL_S)
            except asyncio.TimeoutError:
                pass
            ctx.wake_decider.clear()
            # Woken: only the models whose signals were folded are looked at; every POLL_S (even when
            # wake-ups never stop) a sweep checks every waiting outcome's deadline.
            sweep = time.monotonic() - last_sweep >= POLL_S
            if sweep:
                last_sweep = time.monotonic()
            if (len(ctx.parked_outcomes) or len(ctx.waiting_for_signals)) and tables_settled(app):
                async with deciding:
                    outbox = Outbox(app.producer)
                    await decide_and_send(ctx, outbox, [], sweep=sweep)
                    await outbox.flush()

    if settings.window_close_trigger == "on":
        scan = WindowCloseScan()

        @app.timer(interval=WINDOW_CLOSE_TICK_S)
        async def decide_closed_windows() -> None:
            try:
                async with deciding:
                    await scan.tick(app, ctx, Outbox(app.producer))
            except Exception:
                # An exception escaping a Faust timer crashes the whole worker (measured: "App Crashed");
                # nothing was gated, so a later tick tries again.
                scan.failed()

    @app.agent(source, name="policy")
    async def policy(stream: Any) -> None:
        async for events in stream.take_events(settings.policy_batch_max, within=settings.policy_batch_within_s):
            async with deciding:
                await process_safely(ctx, app.producer, process_batch, [from_faust_event(e) for e in events])
            handled = ctx.outcomes_handled
            for event in events:
                message = event.message
                handled[message.partition] = max(handled.get(message.partition, 0), message.offset + 1)

    return policy


async def process_batch(ctx: WorkerContext, outbox: Outbox, messages: list) -> None:
    """Archive or dead-letter each outcome; decide for every model whose epoch ended."""
    settings = ctx.settings
    topics = settings.topics
    ended: list[tuple[dict, Any, float | None]] = []
    for raw in messages:
        result = accept(raw, OUTCOMES, settings.max_message_bytes)
        if not isinstance(result, Accepted):
            ctx.counters.dead_letters += 1
            await send_dead_letter(outbox, topics.deadletter, result, settings.dead_letter_value_bytes)
            continue
        await archive(ctx, outbox, result.name, raw)
        if result.name == "CommandOutcome":
            ctx.counters.command_outcomes += 1
            corrected = follow_host(ctx.gate_state.get(result.record["model_id"]), result.record)
            if corrected is not None:
                ctx.counters.host_corrections += result.record["status"] != "REJECTED"
                with as_current(raw.event):
                    ctx.gate_state[result.record["model_id"]] = corrected
        else:
            ctx.counters.epoch_outcomes += 1
            ended.append((result.record, raw.event, None))
    await decide_and_send(ctx, outbox, ended)


async def decide_and_send(ctx: WorkerContext, outbox: Outbox, ended: list[tuple[dict, Any, float | None]],
                          sweep: bool = False) -> None:
    """One batched policy call over every due model.

    An outcome waits (parked) while its model has no topology for its run, and for up to
    TAMIYO_SIGNAL_WAIT_SECONDS while the telemetry agent has not yet folded that epoch's signals:
    health and outcomes are separate topics, read by separate agents. A waiting outcome is looked
    at again when the telemetry agent folded signals of its model (``ctx.folded``), and its deadline
    on a ``sweep``: never a table look-up per waiting model per call, which under a backlog would
    cost more the further behind the worker is.
    """
    cfg = gate_config(ctx.settings)
    started = time.perf_counter()
    # (record, event, deadline, waited, held). Everything in parked_outcomes or waiting_for_signals
    # holds its message's commit (hold_commit): acked with its batch but not decided, it must be
    # read again after a crash. Fresh outcomes are not held; their batch is committed after this.
    items = [(record, event, deadline, False, False) for record, event, deadline in ended]
    for model_id in ctx.parked_outcomes.models():
        if ctx.topologies.get(model_id):
            items = [(record, event, deadline, False, True) for deadline, (record, event)
                     in ctx.parked_outcomes.release(model_id)] + items
    now = time.monotonic()
    waited_out = []  # in arrival order: of several epochs of one model, the newest is decided
    touched, ctx.folded = ctx.folded, set()
    candidates = ctx.waiting_for_signals.models() if sweep else [m for m in touched if m in ctx.waiting_for_signals]
    for model_id in candidates:
        for deadline, (record, event) in ctx.waiting_for_signals.release(model_id):
            if model_id in touched and _signals_arrived(ctx, record):
                waited_out.append((record, event, None, True, True))
            elif deadline <= now:
                ctx.counters.signal_wait_timeouts += 1
                waited_out.append((record, event, None, True, True))
            else:
                ctx.waiting_for_signals.park(model_id, (record, event), deadline=deadline)
    items = waited_out + items
    # Held events whose handling ends here: without a decision, or with one of this call's decisions.
    finished = [event for _, event in ctx.parked_outcomes.expired()]
    deciding: list[tuple[dict, Any]] = []
    if finished:
        ctx.counters.skipped_no_topology += len(finished)
        log.warning("%d epoch outcomes expired without a topology; not decided", len(finished))
    due: dict[str, tuple[DueModel, Any]] = {}
    for record, event, deadline, waited, held in items:
        model_id = record["model_id"]
        if not has_topology_for(ctx, record):
            if run_superseded(ctx, record):  # a newer run of the model started: nothing to decide
                ctx.counters.stale_outcomes += 1
                finished += [event] if held else []
            elif ctx.parked_outcomes.park(model_id, (record, event), deadline=deadline):
                _hold(event, held)
            else:
                ctx.counters.skipped_no_topology += 1
                finished += [event] if held else []
            continue
        if not waited and not _signals_arrived(ctx, record) and ctx.waiting_for_signals.park(model_id, (record, event)):
            ctx.counters.signal_waits += 1
            _hold(event, held)
            continue
        item = _prepare(ctx, record, cfg, due.get(model_id))
        if item is not None:
            due[model_id] = (item, event)  # an earlier epoch of the model is settled by this decision
            deciding += [(record, event)] if held else []
        else:
            finished += [event] if held else []
    try:
        await _send_decisions(ctx, outbox, due, cfg, started)
    except BaseException:
        # Held outcomes taken out of parking for this call are not in the batch the caller retries:
        # park them again (their model has a topology, so the next call takes them out at once).
        for record, event in deciding:
            if not ctx.parked_outcomes.park(record["model_id"], (record, event)):
                log.error("parking is full: epoch outcome %s/%s left to a restart (its commit is held)",
                          record["model_id"], record["epoch"])
        release_commit(finished)
        raise
    # Delivered (or nothing to deliver): the outcomes need not be read again.
    release_commit(finished + [event for _, event in deciding])


def _hold(event: Any, held: bool) -> None:
    if not held:
        hold_commit(event)


def _signals_arrived(ctx: WorkerContext, outcome: dict) -> bool:
    """True when the graph table holds the outcome's last report for every layer that reports (has seeds).

    The last report is ``(epoch, last_report_step)``, or the epoch alone for an outcome without
    ``last_report_step`` (EpochOutcome v1). A telemetry batch may end half-way through a model's
    round of signals, and a host may send an epoch's reports in several messages; deciding then would
    see the sick layer without data, or with part of the epoch. The epoch's reports may straddle a
    window boundary, so the window before the outcome's is read too.
    """
    model_id, run_id = outcome["model_id"], outcome["run_id"]
    last_step = outcome.get("last_report_step")
    wanted = (outcome["epoch"], -1 if last_step is None else last_step)
    now_s = outcome["timestamp_ms"] / 1000.0
    seen: dict[str, tuple[int, int]] = {}
    for at in (now_s - ctx.settings.window_seconds, now_s):
        window = window_at(ctx, at)[model_id].value() or {}
        if window.get("run_id") == run_id:
            for name, aggregate in window.get("layers", {}).items():
                reached = (int(aggregate.get("epoch", -1)), int(aggregate.get("step", -1)))
                seen[name] = max(seen.get(name, (-1, -1)), reached)
    topology = ctx.topologies.get(model_id) or {}
    reporting = [layer["name"] for layer in topology.get("layers", ()) if layer.get("num_seeds", 0) > 0]
    return bool(seen) and all(seen.get(name, (-1, -1)) >= wanted for name in reporting or seen)


async def _send_decisions(ctx: WorkerContext, outbox: Outbox, due: dict[str, tuple[DueModel, Any]],
                          cfg: Any, started: float) -> None:
    topics = ctx.settings.topics
    if not due:
        return
    serving = ctx.policy.serving
    made = decide([d for d, _ in due.values()], serving.model, serving.version, cfg)
    for decision in made:
        key = decision.record["model_id"].encode()
        await outbox.send(topics.experience, key, encode("DecisionRecord", decision.record),
                          provenance("DecisionRecord"))
        ctx.counters.decisions += 1
        if decision.command is not None:
            await outbox.send(topics.commands, key, encode("AdaptationCommand", decision.command))
            ctx.counters.commands_sent += 1
    await outbox.flush()
    # Gate state is written only after the decision and command are delivered: a crash before
    # this point re-decides the epoch (same decision id), a crash after it never re-sends.
    for decision, (_, event) in zip(made, due.values()):
        with as_current(event):
            ctx.gate_state[decision.record["model_id"]] = decision.gate
    if ctx.metrics is not None:
        now = time.time()
        since = [now - stamp for _, event in due.values() if (stamp := _record_time(event)) is not None]
        ctx.metrics.observe_decisions(len(made), time.perf_counter() - started, serving.version, since)


def _record_time(event: Any) -> float | None:
    """The Kafka timestamp (seconds) of an event's message, when it has one."""
    stamp = getattr(getattr(event, "message", None), "timestamp", None)
    return float(stamp) if isinstance(stamp, (int, float)) and stamp > 0 else None


def _prepare(ctx: WorkerContext, outcome: dict, cfg: Any, pending: tuple | None) -> DueModel | None:
    model_id = outcome["model_id"]
    gate = pending[0].gate if pending else ctx.gate_state.get(model_id)
    windows = _window_and_previous(ctx, model_id, outcome["timestamp_ms"] / 1000.0)
    return prepare(outcome, ctx.topologies[model_id], windows, gate, cfg)


def _window_and_previous(ctx: WorkerContext, model_id: str, at_s: float) -> list[dict]:
    """The model's window at ``at_s`` and the one before it: what a decision's graph is made of."""
    return [window_at(ctx, at_s - ctx.settings.window_seconds)[model_id].value(),
            window_at(ctx, at_s)[model_id].value()]


class WindowCloseScan:
    """The window-close trigger of one worker (see ``streams/window_close.py``).

    The graphs table is scanned when a window boundary has passed (plus grace), when this worker's
    partitions changed, or while models were put off; not on every tick, since a scan reads every
    window of every model.
    """

    def __init__(self) -> None:
        self.marks = window_close.OutcomeMarks()
        self._scanned: tuple[float, frozenset[int]] | None = None
        self._retry = False
        self._error_logged_at = 0.0

    async def tick(self, app: faust.App, ctx: WorkerContext, outbox: Outbox) -> int:
        settings = ctx.settings
        if not tables_settled(app):
            # A model of a partition taken over would be judged on a partly recovered gate state:
            # measured in the worker-crash chaos scenario, epochs already decided by the previous
            # owner were decided again, differently.
            self._retry = True
            return 0
        now = time.time()
        closed = window_close.closed_until(now, settings.window_seconds, settings.window_close_grace_seconds)
        owned = frozenset(active_partitions(app, settings.topics.outcomes))
        if (closed, owned) == self._scanned and not self._retry:
            return 0
        made, put_off = await decide_on_window_close(app, ctx, outbox, now, owned, self.marks)
        self._scanned, self._retry = (closed, owned), put_off > 0
        return made

    def failed(self) -> None:
        if time.monotonic() - self._error_logged_at > 30:
            self._error_logged_at = time.monotonic()
            log.exception("window-close decisions failed; retrying every %.1fs", WINDOW_CLOSE_TICK_S)


async def decide_on_window_close(app: faust.App, ctx: WorkerContext, outbox: Outbox, now: float,
                                 owned: frozenset[int], marks: window_close.OutcomeMarks) -> tuple[int, int]:
    """Decide every model of ``owned`` partitions whose window closed with its ended epoch undecided;
    returns (decided, put off).

    A model is put off while one of its outcomes waits (for a topology or its signals) or while its
    partition has outcomes sent before the window closed that are not processed yet: those decide
    their own epochs. Models of other partitions are left to their owner (this worker may still hold
    their windows: standby replicas, or windows written before a rebalance moved them away).
    """
    settings = ctx.settings
    topic = settings.topics.outcomes
    started = time.perf_counter()
    closed = window_close.closed_until(now, settings.window_seconds, settings.window_close_grace_seconds)
    for gone in set(ctx.outcomes_handled) - owned:
        del ctx.outcomes_handled[gone]
    caught_up = set()
    for p in owned:
        end, committed = highwater_and_committed(app.consumer, TP(topic, p))
        # Handled, not only committed: a parked outcome holds its partition's commit back (its own
        # model is put off below), and the partition's other models must not wait for it.
        if marks.caught_up(p, closed, end, max(committed, ctx.outcomes_handled.get(p, 0))):
            caught_up.add(p)
    waiting = set(ctx.parked_outcomes.models()) | set(ctx.waiting_for_signals.models())

    def decided(model_id: str, run_id: str) -> int:
        return last_decided_epoch(ctx.gate_state.get(model_id), run_id)

    cfg = gate_config(settings)
    due: dict[str, tuple[DueModel, Any]] = {}
    put_off = 0
    for outcome, start in window_close.due_on_close(ctx.graphs.table.data.items(), now, settings.window_seconds,
                                                    settings.window_close_grace_seconds, decided):
        model_id = outcome["model_id"]
        partition = model_partition(model_id, settings.partitions)
        if partition not in owned or not has_topology_for(ctx, outcome):
            continue
        if partition not in caught_up or model_id in waiting:
            put_off += 1
            continue
        windows = _window_and_previous(ctx, model_id, start)
        item = prepare(outcome, ctx.topologies[model_id], windows, ctx.gate_state.get(model_id), cfg,
                       trigger=window_close.TRIGGER)
        if item is not None:
            # The gate write needs a current event of the model's own partition (its changelog partition).
            due[model_id] = (item, PartitionEvent(topic, partition))
    if due:
        log.info("window closed without an EpochOutcome: deciding %s",
                 ", ".join(f"{m} epoch {d.outcome['epoch']}" for m, (d, _) in list(due.items())[:5]) +
                 (f" and {len(due) - 5} more" if len(due) > 5 else ""))
        await _send_decisions(ctx, outbox, due, cfg, started)
        ctx.counters.window_close_decisions += len(due)
    return len(due), put_off


def model_partition(model_id: str, partitions: int) -> int:
    """The partition of a model's messages (Kafka's murmur2 partitioner, as every producer uses)."""
    return (murmur2(model_id.encode()) & 0x7FFFFFFF) % partitions
