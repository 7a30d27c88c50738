"""Scenario 7 — broker restart: the Apache Kafka node restarts mid-stream (same data folder, same ports).

A dedicated embedded broker (never the shared one) carries a worker and a simulated fleet. The broker
is restarted gracefully (and, unless ``quick``, then killed with ``kill -9`` and started again). Nobody
is told: the worker, the fleet's producer and command reader reconnect on their own. Checks: the worker
is alive afterwards, decisions resume, every fleet message was delivered (librdkafka retries through the
outage) and every input is on the experience topic.
"""

from __future__ import annotations

import time
from typing import Any

from tamiyo.chaos.harness import ChaosEnv, FleetThread, Observer, audit, progress, wait_until
from tamiyo.chaos.report import scenario_result


def run(env: ChaosEnv, quick: bool = False, seed: int = 0) -> dict[str, Any]:
    broker = env.embedded_broker("kafka-restart")
    try:
        return _run(env, broker, quick, seed)
    finally:  # the dedicated broker never outlives its scenario
        for child in list(env.children):
            child.stop(10)
        broker.stop()
        if broker in env.brokers:
            env.brokers.remove(broker)


def _run(env: ChaosEnv, broker: Any, quick: bool, seed: int) -> dict[str, Any]:
    started = time.monotonic()
    settings = env.settings("broker_restart", partitions=2, bootstrap=broker.bootstrap)
    models = 12 if quick else 40
    observer = Observer(settings)
    observer.start()
    worker = env.start_worker(settings)
    worker.wait_ready()
    fleet = FleetThread(settings, models=models, epoch_interval_s=0.4, seed=seed, epochs_per_run=1000)
    fleet.start()
    all_models = {f"sim-{seed}-{i:04d}" for i in range(models)}

    def every_model_since(t: float) -> bool:
        return {d.model_id for d in observer.decisions_since(t)} >= all_models

    t = time.monotonic()
    wait_until(lambda: every_model_since(t), 120, what="decisions for every model", alive=worker.alive)
    restarts = []
    for hard in ([False] if quick else [False, True]):
        time.sleep(2.0)
        down_at = time.monotonic()
        broker.restart(timeout=120, hard=hard)
        up_at = time.monotonic()
        how = "killed" if hard else "stopped"
        progress(f"broker_restart: {how} and restarted the broker in {up_at - down_at:.1f}s")
        wait_until(lambda t=up_at: observer.first_decision_after(t) is not None, 180,
                   what="a decision after the restart", alive=worker.alive)
        first = observer.first_decision_after(up_at)
        wait_until(lambda t=up_at: every_model_since(t), 180, what="every model decided after the restart",
                   alive=worker.alive)
        restarts.append({
            "kind": "kill -9" if hard else "graceful",
            "downtime_s": round(up_at - down_at, 1),
            "broker_up_to_first_decision_s": round(first - up_at, 1),
            "broker_up_to_all_models_decided_s": round(time.monotonic() - up_at, 1),
        })
    time.sleep(3.0)
    stats = fleet.finish(120)
    result, _ = audit(observer, settings, {}, timeout=90)
    alive = worker.alive()
    exit_code = worker.returncode
    observer.stop()
    worker.stop()
    checks = {
        "worker_survived": alive,
        "decisions_resumed": True,  # wait_until above raised otherwise
        "fleet_delivered_everything": stats is not None and stats.delivery_failures == 0,
        "no_input_lost": result.lost == 0,
        "every_command_archived": result.commands_unarchived == 0,
        "no_duplicate_applies": result.duplicate_applies == 0,
    }
    return scenario_result(
        checks, lost=result.lost, crashes=len(restarts), duplicate_applies=result.duplicate_applies,
        recovery_seconds={f"broker_{r['kind'].replace(' ', '').replace('-', '')}": r["broker_up_to_first_decision_s"]
                          for r in restarts},
        restarts=restarts,
        worker_exit_code=exit_code,
        valid_inputs=result.valid_inputs,
        archived_duplicates=result.archived_duplicates,
        decisions=result.decisions,
        fleet=stats.as_dict() if stats else None,
        lost_examples=result.lost_examples,
        seconds=round(time.monotonic() - started, 1),
    )
