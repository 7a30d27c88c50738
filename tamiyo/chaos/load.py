"""Scenario 6 — load: a fleet of many simulated models for minutes; bounded memory, no growing lag.

A ``tamiyo fleet`` subprocess simulates ``models`` hosts (each: a topology per run, a HealthBatch of
two reports per epoch, an EpochOutcome, CommandOutcomes). One worker serves them. Sampled every
few seconds: the worker's RSS (psutil) and the consumer lag of its group ``<prefix>-worker`` (end
offsets minus committed offsets over the four input topics). Reported: peak RSS and its trend, the
lag's least-squares slope and per-third means, and the time to drain once the fleet stops.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from tamiyo.chaos.harness import ChaosEnv, LagSampler, Observer, audit, consumer_lag, progress, trend, wait_until
from tamiyo.chaos.report import scenario_result


@dataclass(frozen=True)
class Scale:
    models: int
    duration_s: float
    epoch_interval_s: float
    sample_s: float


QUICK = Scale(models=300, duration_s=30.0, epoch_interval_s=4.0, sample_s=2.0)
FULL = Scale(models=1000, duration_s=180.0, epoch_interval_s=8.0, sample_s=5.0)
RSS_LIMIT_MB = 2048.0


def _thirds(values: list[float]) -> list[float]:
    if not values:
        return [0.0, 0.0, 0.0]
    n = len(values)
    cuts = [values[: max(1, n // 3)], values[n // 3: max(n // 3 + 1, 2 * n // 3)], values[2 * n // 3:] or values[-1:]]
    return [round(sum(c) / len(c), 1) for c in cuts]


def run(env: ChaosEnv, quick: bool = False, scale: Scale | None = None, seed: int = 0) -> dict[str, Any]:
    scale = scale or (QUICK if quick else FULL)
    started = time.monotonic()
    settings = env.settings("load", partitions=4)
    observer = Observer(settings, keep_decisions=False)
    observer.start()
    worker = env.start_worker(settings)
    worker.wait_ready()
    sampler = LagSampler(settings, scale.sample_s, pids=lambda: [worker.pid] if worker.alive() else [])
    sampler.start()
    fleet = env.start_cli(settings, ["fleet", "--models", str(scale.models), "--duration", str(scale.duration_s),
                                     "--epoch-interval", str(scale.epoch_interval_s), "--seed", str(seed)], "fleet")
    progress(f"load: {scale.models} models for {scale.duration_s:.0f}s, an epoch every {scale.epoch_interval_s}s")
    wait_until(lambda: not fleet.alive(), scale.duration_s + 300, 1.0, "the fleet to finish", worker.alive)
    stopped_at = time.monotonic()
    drain_s: float | None
    try:
        drain_s = wait_until(lambda: consumer_lag(settings) == 0, 120, 1.0, "lag drained", worker.alive)
    except TimeoutError:
        drain_s = None
    sampler.stop()
    result, scan = audit(observer, settings, {}, timeout=90)
    alive = worker.alive()
    observer.stop()
    worker.stop()

    fleet_log = fleet.log()
    failures = re.search(r"delivery_failures=(\d+)", fleet_log)
    produced = re.search(r"messages_produced=(\d+)", fleet_log)
    t0 = sampler.samples[0]["t"] if sampler.samples else 0.0
    # Steady state: skip the fleet's first epoch interval (start-up) and the samples after it stopped.
    in_run = [s for s in sampler.samples if s["t"] - t0 >= scale.epoch_interval_s
              and s["t"] <= stopped_at - sampler.t0]
    lags = [s["lag"] for s in in_run]
    rss = [s["rss_mb"] for s in sampler.samples if s["rss_mb"] > 0]
    input_rate = scan.messages / scale.duration_s
    lag_slope = trend([(s["t"], s["lag"]) for s in in_run])
    rss_slope = trend([(s["t"], s["rss_mb"]) for s in in_run if s["rss_mb"] > 0])
    lag_thirds = _thirds(lags)
    rss_thirds = _thirds([s["rss_mb"] for s in in_run if s["rss_mb"] > 0])
    # "Not growing": the backlog at the end of the run is within a few seconds of input, or no larger
    # than at the start; memory grows by less than a quarter between the first and last third.
    lag_bound = max(lag_thirds[0] * 1.5, input_rate * 5.0)
    checks = {
        "worker_alive": alive,
        "lag_not_growing": lag_thirds[2] <= lag_bound,
        "lag_drains_after_the_run": drain_s is not None,
        "memory_bounded": bool(rss) and max(rss) < RSS_LIMIT_MB and rss_thirds[2] <= rss_thirds[0] * 1.25 + 50,
        "no_input_lost": result.lost == 0,
        "fleet_delivered_everything": failures is not None and int(failures.group(1)) == 0,
    }
    return scenario_result(
        checks, lost=result.lost, crashes=0, duplicate_applies=result.duplicate_applies,
        models=scale.models,
        duration_s=scale.duration_s,
        epoch_interval_s=scale.epoch_interval_s,
        input_messages=scan.messages,
        fleet_messages_produced=int(produced.group(1)) if produced else None,
        input_rate_per_s=round(input_rate, 1),
        decisions=result.decisions,
        peak_rss_mb=max(rss) if rss else None,
        rss_mb_by_third=rss_thirds,
        rss_slope_mb_per_min=round(rss_slope * 60, 2),
        rss_limit_mb=RSS_LIMIT_MB,
        lag_by_third=lag_thirds,
        lag_max=max(lags) if lags else None,
        lag_slope_per_s=round(lag_slope, 2),
        lag_bound=round(lag_bound, 1),
        drain_seconds=None if drain_s is None else round(drain_s, 1),
        samples=sampler.samples,
        seconds=round(time.monotonic() - started, 1),
    )
