"""Scenario 3 — worker crash: ``kill -9`` workers mid-stream; restart; a second worker takes over.

A simulated fleet runs throughout (``hosts.fleet.run_fleet`` in a thread: it applies commands and
answers with CommandOutcomes on the outcomes topic). Before each kill, HealthSignals of a model
and an EpochOutcome of a model without topology are *parked* in the worker that is about to die (their
topology is published only after the kill), to show parked messages survive a crash: the signals are
archived and the outcome is decided after it.

* full: (A) one worker serves alone; kill -9; restart it (the whole group was down: every table comes
  back from its changelog); (B) a second worker joins; kill -9 it; the first takes its partitions over.
* quick (the test): two workers serve; kill -9 one, the other takes over; restart the killed one
  and it rejoins.

Checks: every valid input (fleet and parked signals) is on the experience topic, every command is
archived, no decision id is APPLIED twice (CommandOutcome statuses on the outcomes topic), of a
decision re-made differently after a crash replay keeps the one the host handled (its first
command; ``training.episodes.handled_record``), the cooldown gate held across crashes (no layer
adapted twice within the cooldown, by the APPLIED CommandOutcomes that name what hosts applied:
gate_state recovered, and corrected by the hosts' word after a differing re-decision), and
decisions resume for every model. Re-decisions that differ are counted, not failed
(the README's Reliability section says why they happen). Recovery: kill → first new decision for a
model whose partition the killed worker owned (and → every such model decided again).

Workers run as ``tamiyo.chaos.traced_worker``: a trace of Faust's offset bookkeeping explains any
lost input (``lost_explained``) and shows whether Faust acked offsets it never delivered to an agent
(``faust_gaps_acked``; issue 4, fixed by ``streams/faust_seek.py``).
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from hosts.partitioner import partition_for
from schemas import encode
from tamiyo.chaos.faust_trace import contiguous_runs, explain, gaps_by_topic, read_trace
from tamiyo.chaos.harness import (
    SESSION_TIMEOUT_S,
    ChaosEnv,
    FleetThread,
    Observer,
    WorkerProcess,
    audit,
    produce_with_positions,
    progress,
    wait_until,
)
from tamiyo.chaos.report import scenario_result
from tamiyo.config import Settings


def cooldown_violations(adaptations: list[tuple[str, str, str, int]], cooldown_epochs: int) -> int:
    """Adaptations hosts applied to the same layer of the same run fewer than ``cooldown_epochs``
    epochs apart: ``adaptations`` are (model, run, layer, epoch) from APPLIED CommandOutcomes, which
    name the command applied — after a crash, not necessarily the decision the worker made last."""
    adapted: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for model, run, layer, epoch in adaptations:
        adapted[(model, run, layer)].append(epoch)
    violations = 0
    for epochs in adapted.values():
        epochs.sort()
        violations += sum(1 for a, b in zip(epochs, epochs[1:], strict=False) if b - a < cooldown_epochs)
    return violations


def redecisions_not_as_handled(settings: Settings, conflicting: list[str],
                               first_commands: dict[str, dict[str, Any]]) -> list[str]:
    """Decision ids decided differently more than once whose record, as replay keeps it for training,
    is not the action hosts handled: the id's first command on the commands topic, WAIT without one."""
    if not conflicting:
        return []
    from training.episodes import COMMANDS_UNDECODED, EPISODE_TYPES, group_episodes, is_handled
    from training.replay import replay

    records, _ = replay(settings, progress=False, types=EPISODE_TYPES, undecoded=COMMANDS_UNDECODED)
    kept = {did: record for episode in group_episodes(records).values() for did, record in episode.decisions.items()}
    wrong = []
    for did in conflicting:
        record, command = kept.get(did), first_commands.get(did)
        if record is None or not is_handled(record, command):
            wrong.append(f"{did}: kept {None if record is None else record['action_index']}, "
                         f"handled {command and (command['layer_name'], command['seed_index'], command['kernel'])}")
    return wrong


def assigned_partitions(worker: WorkerProcess, topic: str) -> set[int]:
    """The partitions of ``topic`` in the worker's latest assignment (from Faust's assignment table)."""
    text = worker.log()
    block = text.rsplit("Setting newly assigned partitions", 1)[-1] if "Setting newly assigned" in text else ""
    match = re.search(rf"\| {re.escape(topic)}\s+\| \{{([0-9,\- ]+)\}}", block)
    parts: set[int] = set()
    for piece in (match.group(1).split(",") if match else []):
        lo, _, hi = piece.strip().partition("-")
        parts.update(range(int(lo), int(hi or lo) + 1))
    return parts


class _Probe:
    """Parks HealthSignals and an EpochOutcome of a model without topology in the worker that owns
    ``partitions``."""

    def __init__(self, settings: Settings, name: str, partitions: set[int]) -> None:
        self.settings = settings
        self.model = next(m for m in (f"{name}-{i:03d}" for i in range(1000))
                          if not partitions or partition_for(m.encode(), settings.partitions) in partitions)
        self.positions: list[tuple[str, int, int]] = []

    def park(self) -> None:
        t = self.settings.topics
        signal = {"model_id": self.model, "run_id": f"{self.model}-run", "layer_name": "layers.0", "epoch": 0,
                  "step": 1, "timestamp_ms": int(time.time() * 1000), "health_score": 0.9,
                  "activation_variance": 0.1, "dead_neuron_ratio": 0.0, "avg_correlation": 0.1, "gradient_norm": 0.1,
                  "execution_latency_ms": 0.1, "error_count": 0, "active_seeds": 0, "total_seeds": 1,
                  "seed_states": ["DORMANT"]}
        outcome = {"model_id": self.model, "run_id": f"{self.model}-run", "epoch": 0,
                   "timestamp_ms": signal["timestamp_ms"] + 1, "train_loss": 1.0, "val_loss": 1.0,
                   "train_accuracy": 0.5, "val_accuracy": 0.5, "parameter_count": 20, "final": False}
        delivered = produce_with_positions(self.settings, [
            (t.health, self.model.encode(), encode("HealthSignal", dict(signal, step=i)), "parked") for i in range(3)])
        self.positions += [pos for pos, _ in delivered]
        # Acked with its batch but undecided (no topology): the worker must not commit past it.
        self.positions += [pos for pos, _ in produce_with_positions(self.settings, [
            (t.outcomes, self.model.encode(), encode("EpochOutcome", outcome), "parked")])]
        time.sleep(3.0)  # processed and acked by the worker; Faust commits every second

    def publish_topology(self) -> None:
        topology = {"model_id": self.model, "run_id": f"{self.model}-run", "timestamp_ms": int(time.time() * 1000),
                    "layers": [{"name": "layers.0", "layer_type": "KasminaLayer", "input_size": 4, "output_size": 4,
                                "parameter_count": 20, "num_seeds": 1}], "edges": []}
        produce_with_positions(self.settings, [(self.settings.topics.topology, self.model.encode(),
                                                encode("ModelTopology", topology), "orphan")])


def run(env: ChaosEnv, quick: bool = False, seed: int = 0) -> dict[str, Any]:
    started = time.monotonic()
    models = 16 if quick else 60
    settings = env.settings("worker_crash", partitions=4)
    t = settings.topics
    observer = Observer(settings)
    observer.start()
    all_models = {f"sim-{seed}-{i:04d}" for i in range(models)}

    def decided_since(since: float, wanted: set[str]) -> bool:
        return {d.model_id for d in observer.decisions_since(since)} >= wanted

    def models_on(partitions: set[int]) -> set[str]:
        return {m for m in all_models if partition_for(m.encode(), settings.partitions) in partitions}

    def stable(workers: list[WorkerProcess], what: str) -> None:
        """Every model decided in a window that starts after the group settled."""
        time.sleep(6.0)
        since = time.monotonic()
        wait_until(lambda: decided_since(since, all_models), 180, what=what,
                   alive=lambda: all(w.alive() for w in workers))

    def kill_and_measure(victim: WorkerProcess, survivors: list[WorkerProcess], label: str,
                         restart: bool) -> dict[str, Any]:
        owned = assigned_partitions(victim, t.outcomes) or set(range(settings.partitions))
        probe = _Probe(settings, f"orphan-{label}", assigned_partitions(victim, t.health))
        probe.park()
        victims_models = models_on(owned)
        killed_at = victim.kill()
        progress(f"worker_crash: {label}: killed {victim.name} (kill -9), it owned outcomes partitions "
                 f"{sorted(owned)} ({len(victims_models)} models)")
        if restart:
            victim.restart()
        alive = (lambda: victim.alive()) if restart else (lambda: all(w.alive() for w in survivors))
        after = killed_at + 1.0
        wait_until(lambda: observer.first_decision_after(after, lambda d: d.model_id in victims_models) is not None,
                   240, what=f"{label}: a decision for the killed worker's models", alive=alive)
        first = observer.first_decision_after(after, lambda d: d.model_id in victims_models) - killed_at
        probe.publish_topology()
        wait_until(lambda: decided_since(after, victims_models), 240, what=f"{label}: all of its models", alive=alive)
        try:  # the parked outcome is decided once its topology is there (a miss is a failed check, not an error)
            wait_until(lambda: decided_since(after, {probe.model}), 60, what=f"{label}: the parked outcome",
                       alive=alive)
        except TimeoutError:
            pass
        return {"killed": victim.name, "owned_outcome_partitions": sorted(owned),
                "models_affected": len(victims_models),
                "parked_outcome_decided": decided_since(after, {probe.model}),
                "kill_to_first_decision_s": round(first, 1),
                "kill_to_all_models_decided_s": round(time.monotonic() - killed_at, 1),
                "probe": probe}

    traces: dict[str, Path] = {}

    def start(name: str) -> WorkerProcess:
        """A worker whose Faust offset bookkeeping is traced: a lost message can be explained. Its seeks
        to the committed offsets are slowed down as on a busy machine, which makes the issue-4 race
        likely (without streams/faust_seek.py, Faust then acks offsets it never delivered)."""
        traces[name] = settings.data_dir / f"{name}.trace"
        return env.start_worker(settings, name, module="tamiyo.chaos.traced_worker",
                                TAMIYO_FAUST_TRACE=str(traces[name]), TAMIYO_CHAOS_SEEK_DELAY_S="0.5")

    phases: list[dict[str, Any]] = []
    fleet = FleetThread(settings, models=models, epoch_interval_s=0.5, seed=seed, epochs_per_run=1000)
    if quick:
        w1, w2 = start("worker-1"), start("worker-2")
        w1.wait_ready()
        w2.wait_ready()
        fleet.start()
        stable([w1, w2], "two workers serving")
        phases.append(kill_and_measure(w1, [w2], "takeover", restart=False) | {"kind": "takeover"})
        w1.restart()  # the killed worker comes back and rejoins the group
        w1.wait_ready()
        stable([w1, w2], "the restarted worker rejoined")
        survivors = [w1, w2]
    else:
        w1 = start("worker-1")
        w1.wait_ready()
        fleet.start()
        stable([w1], "one worker serving")
        phases.append(kill_and_measure(w1, [], "restart", restart=True) | {"kind": "restart (whole group down)"})
        w2 = start("worker-2")
        w2.wait_ready()
        stable([w1, w2], "two workers serving")
        phases.append(kill_and_measure(w2, [w1], "takeover", restart=False) | {"kind": "takeover"})
        survivors = [w1]
    time.sleep(3.0)
    stats = fleet.finish()
    result, scan = audit(observer, settings, {}, timeout=90)
    parked_positions = [pos for phase in phases for pos in phase["probe"].positions]
    with observer.lock:
        parked_archived = sum(1 for p in parked_positions if observer.archived_count(p) > 0)
        parked_dead = sum(1 for p in parked_positions if p in observer.dead)
        decisions = list(observer.decisions)
        lost = [p for p in scan.all_positions() if observer.archived_count(p) == 0]
    violations = cooldown_violations(scan.adaptations, settings.cooldown_epochs)
    misrecorded = redecisions_not_as_handled(settings, result.conflicting_ids, observer.first_commands)
    ids = [d.decision_id for d in decisions]
    alive = all(w.alive() for w in survivors)
    recovery_log = [line.split("]: ", 1)[-1].strip() for w in survivors for line in w.log().splitlines()
                    if "Recovery" in line and "Done reading" in line]
    observer.stop()
    for w in survivors:
        w.stop()
    for phase in phases:
        phase.pop("probe")
    events = {name: read_trace(path) for name, path in traces.items()}
    lost_runs = contiguous_runs(lost)
    gaps = gaps_by_topic(events)

    checks = {
        "no_valid_input_lost": result.lost == 0,
        # Nothing is compacted or transactional here: an offset Faust acks without delivering it is the
        # takeover bug (streams/faust_seek.py), even when another worker had processed it before.
        "faust_acked_nothing_unseen": all(path.exists() for path in traces.values()) and not any(gaps.values()),
        "parked_signals_survive_the_crash": parked_archived == len(parked_positions) > 0,
        "parked_outcomes_decided_after_the_crash": all(phase["parked_outcome_decided"] for phase in phases),
        "every_command_archived": result.commands_unarchived == 0,
        "no_duplicate_applies": result.duplicate_applies == 0,
        "replay_keeps_the_handled_redecision": not misrecorded,
        "cooldown_held_across_crash": violations == 0 and len(scan.adaptations) > 0,
        "decisions_resumed_for_all_models": True,  # wait_until above raised otherwise
        "workers_alive": alive,
        "fleet_delivered_everything": stats.delivery_failures == 0,
    }
    return scenario_result(
        checks, lost=result.lost, crashes=len(phases), duplicate_applies=result.duplicate_applies,
        dead_lettered=parked_dead,
        recovery_seconds={p["kind"].split(" ")[0]: p["kill_to_first_decision_s"] for p in phases},
        phases=phases,
        session_timeout_s=SESSION_TIMEOUT_S,
        models=models,
        valid_inputs=result.valid_inputs,
        archived_duplicates=result.archived_duplicates,
        decisions=result.decisions,
        distinct_decisions=result.distinct_decisions,
        redecided_after_crash=len(ids) - len(set(ids)),
        conflicting_redecisions=result.conflicting_examples,
        conflicting_redecision_count=result.conflicting_decisions,
        redecisions_kept_unlike_the_handled_command=misrecorded[:10],
        commands=result.commands,
        commands_applied=result.applied,
        command_outcome_statuses=result.outcome_statuses,
        cooldown_violations=violations,
        adaptations_applied=len(scan.adaptations),
        parked_at_crash=len(parked_positions),
        parked_archived=parked_archived,
        parked_dead_lettered=parked_dead,
        changelog_recoveries_logged=len(recovery_log),
        fleet=stats.as_dict() if stats else None,
        lost_examples=result.lost_examples,
        lost_runs=lost_runs,
        lost_explained=explain(lost_runs, events)[:20],
        faust_gaps_acked=gaps,
        seconds=round(time.monotonic() - started, 1),
    )
