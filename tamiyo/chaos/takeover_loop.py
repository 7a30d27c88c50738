"""Repeated takeovers under load (issue 4): the reproduction of the takeover message loss.

Two traced workers (``tamiyo.chaos.traced_worker``) serve a simulated fleet; each cycle kills one
with ``kill -9``, waits until the other has taken its partitions over, restarts it and waits until
it has rejoined. Once the fleet has stopped and the group has caught up (lag 0), every valid input
missing from the experience topic is reported as contiguous runs per partition, each explained from
the workers' traces: the gaps Faust acked without delivering, the agent queues it cleared, and the
commit that passed the run.

``python -m tamiyo.chaos.takeover_loop [--cycles 4] [--models 24] [--partitions 8] [--seed 0]
[--bootstrap HOST:PORT] [--workdir DIR] [--seek-delay 0.5] [--without-seek-guard]``.
``--without-seek-guard`` runs the workers with Faust's own seek (no ``streams.faust_seek``) to show the
loss; ``--seek-delay`` slows every seek to the committed offsets down (as a busy consumer thread
does), which makes the race likely on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

from tamiyo.chaos.faust_trace import contiguous_runs, explain, gaps_by_topic, read_trace
from tamiyo.chaos.harness import ChaosEnv, FleetThread, Observer, audit, consumer_lag, progress, wait_until


def run(env: ChaosEnv, cycles: int = 4, models: int = 24, partitions: int = 8, seed: int = 0,
        seek_guard: bool = True, seek_delay_s: float = 0.5) -> dict[str, Any]:
    started = time.monotonic()
    rng = random.Random(seed)
    settings = env.settings("takeover_loop", partitions=partitions)
    observer = Observer(settings, keep_decisions=False)
    observer.start()
    traces = {name: settings.data_dir / f"{name}.trace" for name in ("w1", "w2")}
    workers = [env.start_worker(settings, name, module="tamiyo.chaos.traced_worker", TAMIYO_FAUST_TRACE=str(path),
                                TAMIYO_CHAOS_WITHOUT_SEEK_GUARD="0" if seek_guard else "1",
                                TAMIYO_CHAOS_SEEK_DELAY_S=str(seek_delay_s))
               for name, path in traces.items()]
    for worker in workers:
        worker.wait_ready()
    fleet = FleetThread(settings, models=models, epoch_interval_s=0.5, seed=seed, epochs_per_run=1000)
    fleet.start()
    time.sleep(8.0)

    def rebalanced(worker: Any, before: int, what: str) -> None:
        wait_until(lambda: worker.log().count("Worker ready") > before, 180, what=what, alive=worker.alive)

    for cycle in range(cycles):
        victim, survivor = workers[cycle % 2], workers[(cycle + 1) % 2]
        time.sleep(rng.uniform(1.0, 5.0))
        before = survivor.log().count("Worker ready")
        victim.kill()
        rebalanced(survivor, before, f"cycle {cycle}: takeover by {survivor.name}")
        progress(f"takeover_loop: cycle {cycle}: killed {victim.name}, {survivor.name} took over")
        time.sleep(rng.uniform(0.0, 6.0))
        before = survivor.log().count("Worker ready")
        victim.restart()
        victim.wait_ready()
        rebalanced(survivor, before, f"cycle {cycle}: {victim.name} rejoining")
        progress(f"takeover_loop: cycle {cycle}: {victim.name} rejoined")
    time.sleep(3.0)
    fleet.finish()
    caught_up = time.monotonic()
    wait_until(lambda: consumer_lag(settings) == 0, 1200, interval=5.0, what="the group catching up",
               alive=lambda: all(w.alive() for w in workers))
    caught_up = time.monotonic() - caught_up
    result, scan = audit(observer, settings, timeout=60)
    with observer.lock:
        lost = [p for p in scan.all_positions() if observer.archived_count(p) == 0]
    observer.stop()
    for worker in workers:
        worker.stop()
    events = {name: read_trace(path) for name, path in traces.items()}
    runs = contiguous_runs(lost)
    return {
        "passed": result.lost == 0 and result.duplicate_applies == 0,
        "seek_guard": seek_guard,
        "seek_delay_s": seek_delay_s,
        "lost": result.lost,
        "lost_runs": runs,
        "explanations": explain(runs, events),
        "gaps_acked": gaps_by_topic(events),
        "valid_inputs": result.valid_inputs,
        "archived_duplicates": result.archived_duplicates,
        "duplicate_applies": result.duplicate_applies,
        "cycles": cycles,
        "models": models,
        "partitions": partitions,
        "catch_up_seconds": round(caught_up, 1),
        "seconds": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tamiyo.chaos.takeover_loop", description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=4)
    parser.add_argument("--models", type=int, default=24)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bootstrap", default=None, help="an existing broker (default: embedded Apache Kafka)")
    parser.add_argument("--workdir", default=None, help="keep logs and traces in this folder")
    parser.add_argument("--without-seek-guard", action="store_true", help="Faust's own seek: shows the loss")
    parser.add_argument("--seek-delay", type=float, default=0.5,
                        help="seconds added to every seek to the committed offsets (widens the race window)")
    args = parser.parse_args(argv)
    with ChaosEnv(Path(args.workdir) if args.workdir else None, args.bootstrap, keep=args.workdir is not None) as env:
        result = run(env, args.cycles, args.models, args.partitions, args.seed, not args.without_seek_guard,
                     args.seek_delay)
    print(json.dumps(result, indent=1))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
