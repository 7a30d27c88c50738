"""Run one worker process: the Faust app plus metrics (and, when configured, champion polling)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import faust

from streams import recovery_watch
from streams.factory import create_app
from streams.faust_compat import held_messages
from streams.pauses import GcPauses, LoopStalls, freeze_startup_heap
from tamiyo.config import Settings

log = logging.getLogger(__name__)


def run_worker(settings: Settings) -> int:
    """Block until SIGINT/SIGTERM; returns the exit code."""
    limit_torch_threads(settings.torch_threads)
    app, ctx = create_app(settings)
    # Before the freeze: what the poller imports (torch_geometric alone is ~200k objects, a ~90 ms
    # full collection if left unfrozen) and the first champion live as long as the rest.
    poller = start_champion_poller(settings, ctx) if settings.policy == "champion" else None
    frozen = freeze_startup_heap()  # torch, Faust, the policy: never garbage, never walked again
    pauses = GcPauses().install()
    if settings.metrics_port:
        ctx.metrics.serve(settings.metrics_port, settings.metrics_addr)
        log.info("metrics on http://%s:%d/metrics", settings.metrics_addr, settings.metrics_port)

    @app.timer(interval=5.0)
    async def refresh_metrics() -> None:
        if ctx.metrics is not None:
            ctx.metrics.observe_lag(await consumer_lag(app), held_messages())
            ctx.metrics.observe_counters(ctx.counters)  # here only: not on the agents' per-batch paths

    watchdog = recovery_watch.start(app, settings.recovery_stall_seconds, settings.recovery_max_rejoins, ctx.metrics)
    reports = [0]
    stalls = LoopStalls(report_over_ms=settings.stall_report_ms)

    @app.task
    async def watch_loop() -> None:
        await stalls.watch(lambda: app.should_stop)

    @app.timer(interval=10.0)
    async def report() -> None:
        reports[0] += 1
        if reports[0] == 1:  # what Faust built while starting (consumer, tables) lives as long
            log.info("gc: %d objects frozen at start-up, %d after the first 10 s", frozen,
                     freeze_startup_heap(collect=False))
        log.info("counters %s policy=%s commit_holds=%d %s %s", ctx.counters.as_dict(), ctx.policy.serving.version,
                 held_messages(), pauses.take(), stalls.take())

    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
    # At log level warn or above Faust installs a terminal spinner that sets the root logger to
    # DEBUG (so that every debug line turns the spinner): every aiokafka send then builds a log
    # record. No spinner: the log level means what it says.
    worker.spinner = None
    log.info("worker starting: policy %s, broker %s", ctx.policy.serving.version, settings.bootstrap_servers)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        if poller is not None:
            poller.stop()
        if watchdog is not None:
            watchdog.stopped.set()
        log.info("worker stopped: counters %s", ctx.counters.as_dict())
        sys.stdout.flush()
    return 0


def limit_torch_threads(threads: int) -> None:
    """Policy batches are small: torch's intra-op thread pool only adds hand-offs, and on a busy
    machine its threads wait for a core. Measured with 1,000 models on 2 cores (worker, broker and
    load generator): single forward passes stalled the event loop for 110-150 ms with torch's
    default pool, the decision p99 with it."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # only settable before the first parallel work; the intra-op pool matters
        pass


async def consumer_lag(app: Any) -> dict[str, int]:
    """Per input topic: high watermark minus committed offset, over this worker's partitions
    (the fetch position where nothing was committed yet). Faust's internal topics are skipped."""
    consumer = app.consumer
    committed = getattr(consumer, "_committed_offset", {})  # Faust keeps the last commit per partition
    lag: dict[str, int] = {}
    try:
        assigned = consumer.assignment()
    except Exception:  # not started / rebalancing
        return lag
    for tp in assigned:
        if tp.topic.endswith("-changelog") or "__assignor" in tp.topic:  # Faust's internal topics
            continue
        try:
            end = consumer.highwater(tp)
            done = committed.get(tp)
            if done is None:
                done = await consumer.position(tp)
        except Exception:
            continue
        if end is None or done is None:
            continue
        lag[tp.topic] = lag.get(tp.topic, 0) + max(int(end) - int(done), 0)
    return lag


def start_champion_poller(settings: Settings, ctx: Any) -> Any:
    """Serve the registry's champion: poll its alias in a thread, never on the event loop."""
    from models.policy import pyg_nn
    from streams.champion import ChampionPoller
    from training.registry import PolicyRegistry, configure_client_env

    pyg_nn()  # networks need it: import it now, not in the poller thread beside the running event loop
    configure_client_env()
    registry = PolicyRegistry(settings.tracking_uri, settings.registered_model)
    poller = ChampionPoller(registry, ctx.policy, settings.champion_poll_seconds,
                            settings.data_dir / "policies", ctx.metrics)
    poller.poll_once()  # serve the champion from the first decision when there is one
    poller.start()
    return poller
