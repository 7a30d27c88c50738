"""Scenario 4 — host crash: hosts die mid-run; the worker keeps serving, the episodes end by default.

A ``tamiyo fleet`` subprocess (the "doomed" hosts; with ``real_host`` also a ``tamiyo host`` training a
real KasminaMLP) is killed with ``kill -9`` mid-run, while a second fleet keeps running. Checks: the
worker stays up and keeps deciding for the surviving models and keeps up with its input (no state
waits for the dead hosts), every input is archived, and the training side's episode join
(``training.episodes.transitions``) ends every dead run with the default reward: the last
transition is ``imputed``, has ``RewardConfig.default_reward`` and ``done=True`` — while the
surviving runs get no imputed reward.
"""

from __future__ import annotations

import time
from typing import Any

from tamiyo.chaos.harness import ChaosEnv, FleetThread, Observer, audit, consumer_lag, progress, wait_until
from tamiyo.chaos.report import scenario_result

DEAD_AFTER_S = 3.0


def run(env: ChaosEnv, quick: bool = False, seed: int = 0, real_host: bool | None = None) -> dict[str, Any]:
    from training.episodes import RewardConfig, group_episodes, transitions
    from training.replay import replay

    started = time.monotonic()
    real_host = (not quick) if real_host is None else real_host
    doomed_models, survivors = (4, 6) if quick else (20, 30)
    interval = 0.3 if quick else 1.0
    settings = env.settings("host_crash", partitions=2)
    observer = Observer(settings)
    observer.start()
    worker = env.start_worker(settings)
    worker.wait_ready()
    survivor_fleet = FleetThread(settings, models=survivors, epoch_interval_s=interval, seed=1, epochs_per_run=1000)
    survivor_fleet.start()
    doomed = env.start_cli(settings, ["fleet", "--models", str(doomed_models), "--epoch-interval", str(interval),
                                      "--duration", "900", "--seed", "7"], "doomed-fleet")
    doomed_ids = {f"sim-7-{i:04d}" for i in range(doomed_models)}
    survivor_ids = {f"sim-1-{i:04d}" for i in range(survivors)}
    host = None
    if real_host:
        host = env.start_cli(settings, ["host", "--model-id", "doomed-host", "--epochs", "200", "--seed", "3"],
                             "doomed-host")
        doomed_ids.add("doomed-host")

    def decided(models: set[str], since: float = 0.0, min_epochs: int = 3) -> bool:
        counts: dict[str, int] = {}
        for d in observer.decisions_since(since):
            counts[d.model_id] = counts.get(d.model_id, 0) + 1
        return all(counts.get(m, 0) >= min_epochs for m in models)

    wait_until(lambda: decided(doomed_ids | survivor_ids), 240, what="decisions for every host", alive=worker.alive)
    killed_at = doomed.kill()
    if host is not None:
        host.kill()
    progress(f"host_crash: killed {len(doomed_ids)} hosts (kill -9) mid-run")
    # The worker keeps deciding for the survivors, and catches up with what the dead hosts sent.
    wait_until(lambda: decided(survivor_ids, killed_at + 1.0, 2), 60, what="survivor decisions after the crash",
               alive=worker.alive)
    lag_after = None
    try:
        wait_until(lambda: consumer_lag(settings) < 2_000, 120, 1.0, "worker caught up", worker.alive)
        lag_after = consumer_lag(settings)
    except TimeoutError:
        lag_after = consumer_lag(settings)

    def silent_for() -> float:  # since the last record about a dead host reached the archive
        last = max((d.seen_at for d in observer.decisions_since(killed_at) if d.model_id in doomed_ids),
                   default=killed_at)
        return time.monotonic() - max(last, killed_at)
    wait_until(lambda: silent_for() > DEAD_AFTER_S + 1.0, 60, 0.5, "the dead hosts to fall silent", worker.alive)
    data_end_ms = int(time.time() * 1000)  # the dead hosts: silent for more than DEAD_AFTER_S; survivors: live
    records, _window = replay(settings, progress=False)  # while the survivors still run
    records = [r for r in records if r.timestamp_ms <= data_end_ms]
    cfg = RewardConfig(dead_after_s=DEAD_AFTER_S)
    episodes = group_episodes(records)
    all_transitions = transitions(episodes, cfg, data_end_ms)
    stats = survivor_fleet.finish()
    result, _ = audit(observer, settings, {}, timeout=120)
    alive = worker.alive()
    observer.stop()
    worker.stop()
    dead_runs: dict[tuple[str, str], list] = {}
    survivor_imputed = 0
    for tr in all_transitions:
        if tr.model_id in doomed_ids:
            dead_runs.setdefault((tr.model_id, tr.run_id), []).append(tr)
        elif tr.imputed:
            survivor_imputed += 1
    # The run each doomed host was in when it died: no final outcome, silent since the kill.
    open_runs = {key for key, ep in episodes.items() if key[0] in doomed_ids and ep.final_epoch is None}
    ended_by_default = 0
    details = []
    for key in sorted(open_runs):
        trs = sorted(dead_runs.get(key, []), key=lambda tr: tr.epoch)
        last = trs[-1] if trs else None
        ok = last is not None and last.imputed and last.done and last.reward == cfg.default_reward
        ended_by_default += ok
        details.append({"model_id": key[0], "run_id": key[1], "transitions": len(trs),
                        "imputed": sum(tr.imputed for tr in trs),
                        "last_reward": None if last is None else last.reward,
                        "last_done": None if last is None else last.done})
    checks = {
        "worker_alive": alive,
        "survivors_keep_getting_decisions": True,  # wait_until above raised otherwise
        "worker_keeps_up": lag_after is not None and lag_after < 2_000,
        "no_input_lost": result.lost == 0,
        "dead_runs_end_with_default_reward": bool(open_runs) and ended_by_default == len(open_runs),
        "live_runs_not_imputed": survivor_imputed == 0,
    }
    return scenario_result(
        checks, lost=result.lost, crashes=len(doomed_ids), duplicate_applies=result.duplicate_applies,
        hosts_killed=sorted(doomed_ids),
        real_host_killed=real_host,
        dead_after_s=DEAD_AFTER_S,
        default_reward=cfg.default_reward,
        dead_runs=len(open_runs),
        dead_runs_ended_by_default=ended_by_default,
        dead_run_details=details[:10],
        survivor_imputed_transitions=survivor_imputed,
        lag_after=lag_after,
        decisions=result.decisions,
        survivor_fleet=stats.as_dict() if stats else None,
        seconds=round(time.monotonic() - started, 1),
    )
