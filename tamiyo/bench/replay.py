"""Replay speed: experience records from Kafka to training tensors.

The experience topic is filled with what a worker archives for a simulated fleet, made with the real
decision code (``streams.decisions.prepare``/``decide`` over the heuristic policy with exploration):
per model and epoch a HealthBatch of two reports (a HealthSignal per layer each, as hosts send them), the
EpochOutcome, the DecisionRecord, and for GERMINATE decisions the AdaptationCommand and the host's
CommandOutcome; a ModelTopology per run.

One measurement is what ``training.job.train`` does: ``training.replay.replay`` (read every record,
decode those an episode is built from; HealthBatches are skipped by the schema their value's
single-object header names, and AdaptationCommands are kept as bytes: group_episodes decodes them
only when a decision id has records with different actions)
→ ``group_episodes`` → ``transitions`` → ``TransitionDataset.from_transitions`` → every row collated
into batches of 1024 (the tensors a learner consumes). The figure is experience records read per
second over all of it (after one unreported warm-up pass); ``decoded_per_s`` beside it counts only
the decoded ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from tamiyo.bench.env import BenchEnv, simulated_models
from tamiyo.bench.harness import Results, Target, progress

Archived = tuple[bytes, bytes, str]  # key, value, record type


@dataclass
class ReplayConfig:
    models: int = 200
    epochs: int = 30
    epochs_per_run: int = 10
    runs: int = 5
    seed: int = 0


def experience_records(models: int, epochs: int, epochs_per_run: int = 10, seed: int = 0) -> list[Archived]:
    """Encoded experience records in archive order (see the module docstring)."""
    from models.decide import GateConfig
    from models.graph import update_layer_aggregate
    from models.heuristic import ThresholdHeuristic
    from schemas import encode
    from schemas.health_batch import health_batch
    from streams.decisions import decide, prepare

    sims = simulated_models(models, seed, epochs_per_run=epochs_per_run)
    policy = ThresholdHeuristic()
    cfg = GateConfig(confidence_threshold=0.5, cooldown_epochs=2, max_adaptations_per_epoch=1, epsilon=0.1)
    topologies: dict[str, dict] = {}
    gates: dict[str, dict] = {}
    out: list[Archived] = []
    for _ in range(epochs):
        due, keys = [], []
        for m in sims:
            key = m.model_id.encode()
            if m.run_over:
                topologies[m.model_id] = m.topology()
                out.append((key, encode("ModelTopology", topologies[m.model_id]), "ModelTopology"))
            aggregates: dict[str, dict] = {}
            rounds = [m.health_signals() for _round in range(2)]
            out.append((key, encode("HealthBatch", health_batch(m.model_id, m.run_id, rounds)), "HealthBatch"))
            for signals in rounds:
                for signal in signals:
                    aggregates[signal["layer_name"]] = update_layer_aggregate(aggregates.get(signal["layer_name"]),
                                                                              signal)
            outcome = m.end_epoch()
            out.append((key, encode("EpochOutcome", outcome), "EpochOutcome"))
            window = {"run_id": outcome["run_id"], "epoch": outcome["epoch"], "layers": aggregates}
            item = prepare(outcome, topologies[m.model_id], [window], gates.get(m.model_id), cfg)
            if item is not None:
                due.append(item)
                keys.append(m)
        for m, made in zip(keys, decide(due, policy, policy.version, cfg)):
            key = m.model_id.encode()
            out.append((key, encode("DecisionRecord", made.record), "DecisionRecord"))
            gates[m.model_id] = made.gate
            if made.command is not None:
                out.append((key, encode("AdaptationCommand", made.command), "AdaptationCommand"))
                out.append((key, encode("CommandOutcome", m.apply(made.command)), "CommandOutcome"))
    return out


def fill_experience(settings: Any, records: list[Archived]) -> None:
    from streams.archive import TYPE_HEADER
    from streams.kafka.clients import make_producer

    producer = make_producer(settings, **{"linger.ms": 20, "batch.num.messages": 10_000,
                                          "queue.buffering.max.messages": 2_000_000})
    for i, (key, value, name) in enumerate(records):
        while True:
            try:
                producer.produce(settings.topics.experience, value, key, headers=[(TYPE_HEADER, name.encode())])
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10_000 == 0:
            producer.poll(0)
    if producer.flush(120):
        raise RuntimeError("experience records were not delivered")


def replay_to_tensors(settings: Any) -> dict[str, float]:
    """One pass; returns seconds per stage and counts."""
    from training.dataset import TransitionDataset
    from training.episodes import COMMANDS_UNDECODED, EPISODE_TYPES, RewardConfig, group_episodes, transitions
    from training.replay import gc_paused, replay

    c0 = time.process_time()
    with gc_paused():  # as training.job.train does
        t0 = time.perf_counter()
        records, window = replay(settings, progress=False, types=EPISODE_TYPES, undecoded=COMMANDS_UNDECODED)
        t1 = time.perf_counter()
        episodes = group_episodes(records)
        steps = transitions(episodes, RewardConfig(), int(time.time() * 1000))
        t2 = time.perf_counter()
        data = TransitionDataset.from_transitions(steps)
    tensors = sum(len(batch) for batch in data.batches(1024))
    t3 = time.perf_counter()
    decoded = sum(1 for record in records if record.value is not None)  # AdaptationCommands stay bytes
    return {"records": len(records) + window.skipped, "decoded": decoded, "transitions": len(steps),
            "rows": tensors, "undecodable": window.undecodable, "cpu_s": time.process_time() - c0,
            "read_decode_s": t1 - t0, "episodes_s": t2 - t1, "tensors_s": t3 - t2, "total_s": t3 - t0}


def decode_only_rate(records: list[Archived]) -> float:
    """In-memory decode of the same bytes (no Kafka), records/s: the codec's share of the work."""
    from schemas import decode

    t0 = time.perf_counter()
    for _, value, _ in records:
        decode(value)
    return len(records) / (time.perf_counter() - t0)


def bench_replay(env: BenchEnv, results: Results, cfg: ReplayConfig) -> None:
    progress(f"building experience: {cfg.models} simulated models x {cfg.epochs} epochs through the decision code")
    records = experience_records(cfg.models, cfg.epochs, cfg.epochs_per_run, cfg.seed)
    settings = env.settings(partitions=4)
    fill_experience(settings, records)
    kinds: dict[str, int] = {}
    for _, _, name in records:
        kinds[name] = kinds.get(name, 0) + 1
    # One pass first, not reported: the broker's first reads of the segment and the first decode of
    # each schema (its numpy plan) are one-time costs, not replay speed.
    replay_to_tensors(settings)
    rates, decoded, cpu_rates, stages = [], [], [], []
    for run in range(cfg.runs):
        stats = replay_to_tensors(settings)
        if stats["records"] != len(records):
            raise RuntimeError(f"replay read {stats['records']} of {len(records)} records")
        rates.append(stats["records"] / stats["total_s"])
        decoded.append(stats["decoded"] / stats["total_s"])
        cpu_rates.append(stats["records"] / stats["cpu_s"])
        stages.append(stats)
        progress(f"  replay run {run + 1}/{cfg.runs}: {rates[-1]:,.0f} records/s ({stats['transitions']} "
                 f"transitions; read+decode {stats['read_decode_s']:.2f}s, episodes {stats['episodes_s']:.2f}s, "
                 f"tensors {stats['tensors_s']:.2f}s)")
    mid = sorted(range(len(rates)), key=rates.__getitem__)[len(rates) // 2]
    results.add("replay_records_per_s", rates, "records/s", Target(">=", 100_000),
                records=len(records), transitions=stages[mid]["transitions"], mix=kinds,
                seconds={k: round(v, 3) for k, v in stages[mid].items() if k.endswith("_s")},
                decode_only_per_s=round(decode_only_rate(records)), decoded_per_s=round(decoded[mid]),
                per_cpu_second=round(cpu_rates[mid]),
                path="replay(types=EPISODE_TYPES, undecoded=COMMANDS_UNDECODED) from Kafka + group_episodes"
                     " + transitions + TransitionDataset + collate(1024)")
