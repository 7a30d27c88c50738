"""Ingest throughput: raw broker consumption, one Tamiyo worker, a naive Faust agent, two workers.

Data: HealthBatches of 1,000 simulated models (8–16 layers each; a report is one HealthSignal per
layer, and hosts send an epoch's reports as one HealthBatch; here 4 reports per epoch, so ~48 signals
per message; ``SignalSource``), produced as a backlog onto a fresh health topic after the models'
topologies. Rates are in signals per second.

* ``broker_consume_per_s``: aiokafka reading such a backlog, nothing else (the limit).
* ``ingest_signals_per_s``: ``tamiyo worker`` processes (decode, validate, windowed graph table,
  archive to experience). One worker process serves all runs; each run produces a fresh backlog
  and measures the worker's own progress, the experience topic's end offsets, between 10 % and 90 %
  of that backlog (so group join and the drain tail are outside the window).
* ``naive_faust_per_s``: ``tamiyo.bench.naive_app`` on the same HealthReports (decode; per signal one
  table write and one awaited ``topic.send``); its output topic's offsets over a fixed window per run.
* ``ingest_single_signals_per_s``: the worker fed one HealthSignal per message (hosts before
  HealthReports), which Faust's per-event cost bounds.
* ``ingest_signals_per_s_1_report`` / ``_2_reports``: the worker fed HealthBatches of 1 or 2 reports
  (about 12 or 24 signals per message): how the rate depends on the signals a message carries.
* ``scaleout_two_workers_per_s``: as ingest, with two worker processes in one consumer group.
* ``faust_delivery_ceiling_per_s``: a Faust agent that only counts events (``take_events``), i.e.
  what Faust's per-event delivery allows on this machine before any Tamiyo code runs.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any

from tamiyo.bench.env import (BenchEnv, CommittedWatch, OffsetWatch, SignalSource, cpu_per_record, produce,
                              steady_rate, watch_until)
from tamiyo.bench.harness import Results, Target, progress

WORKER_ENV = {"TAMIYO_POLICY": "heuristic"}


@dataclass
class IngestConfig:
    models: int = 1000
    signals: int = 480_000  # per ingest run
    reports_per_message: int = 4  # reports per HealthBatch (one per model and epoch)
    shape_signals: int = 120_000  # per run of the 1- and 2-report shapes
    naive_signals: int = 30_000  # backlog over all naive runs (each run gets a third)
    naive_window_s: float = 8.0
    ceiling_signals: int = 100_000
    partitions: int = 4
    runs: int = 3
    timeout_s: float = 120.0


_SOURCES: dict[int, SignalSource] = {}


def source_for(models: int) -> SignalSource:
    if models not in _SOURCES:
        _SOURCES[models] = SignalSource(models)
    return _SOURCES[models]


# --------------------------------------------------------------------------- broker limit


async def _consume_all(settings: Any, topic: str, total: int) -> float:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.bootstrap_servers, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None, max_partition_fetch_bytes=4 * 1048576,
                                fetch_max_bytes=16 * 1048576, **settings.security.aiokafka())
    await consumer.start()
    try:
        seen = 0
        started = None
        while seen < total:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            if started is None and batches:
                started = time.perf_counter()
            for records in batches.values():
                seen += len(records)
        return seen / max(time.perf_counter() - (started or time.perf_counter()), 1e-9)
    finally:
        await consumer.stop()


def bench_broker_consume(env: BenchEnv, results: Results, cfg: IngestConfig) -> None:
    src = source_for(cfg.models)
    settings = env.settings(partitions=cfg.partitions)
    signals = src.signals(cfg.signals)
    produce(settings, settings.topics.health, signals)
    values = []
    for run in range(cfg.runs):
        values.append(asyncio.run(_consume_all(settings, settings.topics.health, len(signals))))
        progress(f"  broker consume run {run + 1}/{cfg.runs}: {values[-1]:,.0f} records/s")
    results.add("broker_consume_per_s", values, "records/s", records=len(signals), partitions=cfg.partitions,
                client="aiokafka getmany, no group",
                value_bytes=round(sum(len(v) for _, v in signals[:1000]) / 1000, 1))


# --------------------------------------------------------------------------- workers


def backlog(src: SignalSource, signals: int, reports: int) -> tuple[list, int]:
    """A fresh backlog of about ``signals`` signals: HealthBatches of ``reports`` reports (as hosts send
    them) or, with 0, one HealthSignal per message. Returns the messages and the signals they carry."""
    if reports:
        return src.batches(signals, reports)
    messages = src.signals(signals)
    return messages, len(messages)


def worker_rates(env: BenchEnv, cfg: IngestConfig, workers: int, label: str,
                 cpu_us: list[float] | None = None, reports: int | None = None,
                 signals: int | None = None) -> list[float]:
    """Signals/s of ``workers`` worker processes, one fresh backlog per run (see the module docstring).
    ``cpu_us`` receives the workers' CPU microseconds per signal of each run. The experience topic
    counts messages; a run's message rate times its backlog's signals per message is its signal rate."""
    cpu_us = cpu_us if cpu_us is not None else []
    reports = cfg.reports_per_message if reports is None else reports
    src = source_for(cfg.models)
    settings = env.settings(partitions=cfg.partitions)
    produce(settings, settings.topics.topology, src.topologies)
    watch = OffsetWatch(settings, settings.topics.experience)
    procs = [env.start_worker(settings, name=f"{label}-{i}", **WORKER_ENV) for i in range(workers)]
    watch.pids = [p.process.pid for p in procs]
    rates = []
    try:
        archived = 0
        expected = len(src.topologies)  # every valid message is archived, topologies included
        for run in range(cfg.runs):
            messages, carried = backlog(src, signals or cfg.signals, reports)
            per_message = carried / len(messages)
            archived = watch.sample()
            produce(settings, settings.topics.health, messages)
            expected += len(messages)
            watch.reset()
            samples = watch_until(watch, expected, cfg.timeout_s, alive=lambda: all(p.alive() for p in procs),
                                  label=f"{label} archived")
            if samples[-1][1] < archived + 0.9 * (expected - archived):
                raise RuntimeError(f"{label}: {samples[-1][1] - archived:,} of {expected - archived:,} archived in "
                                   f"{cfg.timeout_s:.0f}s; worker log:\n{procs[0].log_tail()}")
            shifted = [(t, n - archived) for t, n in samples]
            rates.append(steady_rate(shifted, expected - archived) * per_message)
            cpu = cpu_per_record(watch, expected - archived, offset=archived)
            if cpu is not None:
                cpu_us.append(cpu / per_message)
            progress(f"  {label} run {run + 1}/{cfg.runs}: {rates[-1]:,.0f} signals/s"
                     + (f" ({per_message:.1f} per message)" if reports else "")
                     + (f", {cpu_us[-1]:.0f} worker CPU-us per signal" if cpu is not None else ""))
    finally:
        watch.close()
        for p in procs:
            p.stop()
    return rates


def bench_ingest(env: BenchEnv, results: Results, cfg: IngestConfig) -> None:
    cpu: list[float] = []
    values = worker_rates(env, cfg, 1, "ingest (1 worker)", cpu)
    if cpu:
        results.add("ingest_worker_cpu_us_per_signal", cpu, "CPU-us/signal",
                    note="worker process CPU time per signal in the measured window (robust to other load)")
    results.add("ingest_signals_per_s", values, "signals/s", Target(">=", 20_000), per_run=[round(v) for v in values],
                signals_per_run=cfg.signals, models=cfg.models, partitions=cfg.partitions, workers=1,
                data=f"HealthBatches of {cfg.reports_per_message} reports (one message per model and epoch, "
                     "8-16 signals per report)",
                measured="experience-topic end offsets, 10%..90% of each backlog, x signals per message")
    _ratio(results)


def bench_ingest_single(env: BenchEnv, results: Results, cfg: IngestConfig) -> None:
    """The same worker fed one HealthSignal per message (hosts before HealthReports): bound by Faust's
    per-event cost (see faust_delivery_ceiling_per_s)."""
    cpu: list[float] = []
    values = worker_rates(env, cfg, 1, "ingest single signals (1 worker)", cpu, reports=0,
                          signals=cfg.shape_signals)
    if cpu:
        results.add("ingest_single_worker_cpu_us_per_signal", cpu, "CPU-us/signal")
    results.add("ingest_single_signals_per_s", values, "signals/s", per_run=[round(v) for v in values],
                signals_per_run=cfg.signals, models=cfg.models, partitions=cfg.partitions, workers=1,
                data="one HealthSignal per message")


def bench_ingest_shapes(env: BenchEnv, results: Results, cfg: IngestConfig) -> None:
    """The worker fed HealthBatches of 1 and 2 reports: fewer signals per message, more per-message cost."""
    for reports, name in ((1, "ingest_signals_per_s_1_report"), (2, "ingest_signals_per_s_2_reports")):
        cpu: list[float] = []
        values = worker_rates(env, cfg, 1, f"ingest {reports} report(s) per message (1 worker)", cpu,
                              reports=reports, signals=cfg.shape_signals)
        results.add(name, values, "signals/s", per_run=[round(v) for v in values], signals_per_run=cfg.shape_signals,
                    models=cfg.models, partitions=cfg.partitions, workers=1,
                    data=f"HealthBatches of {reports} report(s), 8-16 signals per report",
                    worker_cpu_us_per_signal=round(sorted(cpu)[len(cpu) // 2], 1) if cpu else None)


def bench_scaleout(env: BenchEnv, results: Results, cfg: IngestConfig) -> None:
    values = worker_rates(env, cfg, 2, "ingest (2 workers)")  # HealthBatches, as for one worker
    extra: dict[str, Any] = {}
    one = results.metrics.get("ingest_signals_per_s")
    if one:
        extra["speedup_vs_one_worker"] = round(sorted(values)[len(values) // 2] / one["value"], 2)
    results.add("scaleout_two_workers_per_s", values, "signals/s", partitions=cfg.partitions, workers=2,
                cpus=os.cpu_count() or 0, **extra)


# --------------------------------------------------------------------------- Faust baselines


def _app_rates(env: BenchEnv, cfg: IngestConfig, module: str, size: int, watch_of: Any, label: str,
               window_s: float | None, extra_env: dict[str, str] | None = None,
               reports: int = 0) -> list[float]:
    """Runs of a Faust app module on fresh backlogs of ``size`` signals (HealthReports or one signal
    per message); ``watch_of(settings)`` samples its progress in what the app counts (signals for
    the naive app, messages for the ceiling)."""
    src = source_for(cfg.models)
    settings = env.settings(partitions=cfg.partitions)
    watch = watch_of(settings)
    proc = env.start_module(settings, module, label.split()[0], **(extra_env or {}))
    rates = []
    try:
        expected = 0
        for run in range(cfg.runs):
            start = watch.sample()
            messages, carried = backlog(src, size, reports)
            produce(settings, settings.topics.health, messages)
            work = carried if reports else len(messages)
            expected += work
            deadline = time.monotonic() + cfg.timeout_s
            while watch.sample() < start + min(500, work // 10):  # first run: group join
                if not proc.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"{label} made no progress:\n{proc.log_tail()}")
                time.sleep(0.2)
            watch.reset()
            samples = watch_until(watch, expected, window_s or cfg.timeout_s, alive=proc.alive, label=label)
            if window_s is None:
                shifted = [(t, n - start) for t, n in samples]
                rates.append(steady_rate(shifted, work))
            else:
                rates.append(steady_rate(samples, expected, lo=0.0, hi=1.0))
                # Let it drain before the next backlog, so runs do not overlap.
                if run + 1 < cfg.runs:
                    watch_until(watch, expected, cfg.timeout_s, alive=proc.alive)
            progress(f"  {label} run {run + 1}/{cfg.runs}: {rates[-1]:,.0f} signals/s")
    finally:
        watch.close()
        proc.stop()
    return rates


def bench_naive(env: BenchEnv, results: Results, cfg: IngestConfig) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    from streams.kafka.clients import base_config
    from tamiyo.bench.naive_app import out_topic

    def sink_watch(settings: Any) -> OffsetWatch:
        admin = AdminClient(base_config(settings))
        for future in admin.create_topics([NewTopic(out_topic(settings), cfg.partitions, 1)]).values():
            future.result(30)
        return OffsetWatch(settings, out_topic(settings))

    # Each run: a fresh backlog, measured over naive_window_s seconds, then drained.
    values = _app_rates(env, cfg, "tamiyo.bench.naive_app", cfg.naive_signals // cfg.runs, sink_watch,
                        "naive faust", window_s=cfg.naive_window_s, reports=cfg.reports_per_message)
    results.add("naive_faust_per_s", values, "signals/s", partitions=cfg.partitions, per_run=[round(v) for v in values],
                agent="decode + per signal: table write + awaited topic.send",
                data="the same HealthBatches as ingest_signals_per_s")
    _ratio(results)


def bench_ceiling(env: BenchEnv, results: Results, cfg: IngestConfig) -> None:
    def committed(settings: Any) -> CommittedWatch:
        return CommittedWatch(settings, f"{settings.topic_prefix}-count", settings.topics.health)

    values = _app_rates(env, cfg, "tamiyo.bench.naive_app", cfg.ceiling_signals, committed,
                        "faust ceiling", window_s=None, extra_env={"TAMIYO_BENCH_APP": "count"})
    results.add("faust_delivery_ceiling_per_s", values, "events/s", partitions=cfg.partitions,
                agent="take_events(4096, within=0.05) that does nothing",
                measured="consumer-group committed offsets (every 0.5 s), 10%..90% of each backlog",
                note="Faust's own per-event cost (fetch thread, conductor, queue, stream, acks) on this machine")


def _ratio(results: Results) -> None:
    """ingest / naive, per run (run i of one against run i of the other) once both are measured."""
    ingest = results.metrics.get("ingest_signals_per_s")
    naive = results.metrics.get("naive_faust_per_s")
    if ingest is None or naive is None:
        return
    pairs = list(zip(ingest.get("per_run", []), naive.get("per_run", [])))
    ratios = [a / b for a, b in pairs if b > 0] or [ingest["value"] / naive["value"]]
    results.add("ingest_vs_naive_ratio", ratios, "x", Target(">=", 10),
                note="ingest run i / naive run i")
