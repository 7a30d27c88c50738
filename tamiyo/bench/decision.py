"""Decision latency: from the EpochOutcome that triggers a decision to its command on the commands topic.

A paced load generator plays ``models`` simulated models against one worker serving the GNN policy
(``TAMIYO_POLICY=untrained``: same network and code path as a champion). Every model runs an epoch
every ``epoch_s`` seconds, staggered over the interval: a report (a HealthSignal per layer) half-way,
another at the end, and then, as hosts send them, both reports as one HealthBatch followed by the
EpochOutcome. So 1,000 models mean 200 reports/s (~2,400 signals/s) and 100 decisions/s with
topology, signals and table state present for all of them.

Latency of one decision = the command record's Kafka timestamp (set by the worker's producer when
it appends the command) minus the outcome record's Kafka timestamp (set by the generator when it
produces it). Only GERMINATE decisions have a command; WAIT decisions are not counted (their share
is reported). ``arrival_*`` extras measure the same at a consumer (includes the consumer's fetch).
The first epoch is warm-up; each run is then ``epochs_per_run`` epochs of every model.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from tamiyo.bench.env import BenchEnv, produce, simulated_models
from tamiyo.bench.harness import Results, Target, percentile, progress


@dataclass
class DecisionConfig:
    models: int = 1000
    small_models: int = 100
    epoch_s: float = 10.0
    epochs_per_run: int = 1
    small_epochs_per_run: int = 2
    runs: int = 3
    policy: str = "untrained"
    reports: bool = True  # HealthBatches as hosts send them; False: one HealthSignal per message


class CommandCollector(threading.Thread):
    """Reads the commands topic from the start: (model_id, epoch) -> (record timestamp ms, arrival ms)."""

    def __init__(self, settings: Any) -> None:
        super().__init__(daemon=True, name="commands")
        from confluent_kafka import TopicPartition

        from streams.kafka.clients import make_consumer
        from streams.kafka.reader import partitions_of

        self.consumer = make_consumer(settings, **{"fetch.wait.max.ms": 5, "fetch.min.bytes": 1})
        topic = settings.topics.commands
        self.consumer.assign([TopicPartition(topic, p, 0) for p in partitions_of(self.consumer, topic)])
        self.seen: dict[tuple[str, int], tuple[int, float]] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        from schemas import decode_as

        while not self._halt.is_set():
            for message in self.consumer.consume(1000, timeout=0.05):
                if message.error() is not None:
                    continue
                now_ms = time.time() * 1000.0
                command = decode_as("AdaptationCommand", message.value())
                self.seen.setdefault((command["model_id"], command["epoch"]), (message.timestamp()[1], now_ms))

    def stop(self) -> None:
        self._halt.set()
        self.join(5)
        self.consumer.close()


class LoadGenerator:
    """Plays the models' epochs at their staggered times; remembers when each outcome was produced."""

    def __init__(self, settings: Any, models: list[Any], epoch_s: float, reports: bool = True) -> None:
        from streams.kafka.clients import make_producer

        self.reports = reports
        self.settings = settings
        self.models = models
        self.epoch_s = epoch_s
        self.producer = make_producer(settings, **{"linger.ms": 1, "queue.buffering.max.messages": 1_000_000})
        self.sent: dict[tuple[str, int], tuple[float, int]] = {}  # (model, epoch) -> (wall ms, epoch index)

    def play(self, epochs: int, tag: int) -> None:
        """``epochs`` epochs of every model; outcomes are tagged with ``tag`` (the run index)."""
        from schemas import encode
        from schemas.health_batch import health_batch

        topics = self.settings.topics
        n = len(self.models)
        step = self.epoch_s / n
        # Every model has two events per epoch: a signal round at its slot + epoch_s/2, and at its
        # slot the next round, then the epoch's rounds and the EpochOutcome (so signals lead the outcome).
        events = sorted([(i * step, 0, i) for i in range(n)] + [((i * step + self.epoch_s / 2) % self.epoch_s, 1, i)
                                                               for i in range(n)])
        held: dict[int, list[list[dict]]] = {}  # a model's rounds of this epoch, not sent yet
        start = time.monotonic()
        for e in range(epochs):
            for offset, kind, i in events:
                due = start + e * self.epoch_s + offset
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                model = self.models[i]
                key = model.model_id.encode()
                signals = model.health_signals()
                if self.reports:
                    rounds = held.setdefault(i, [])
                    rounds.append(signals)
                    if kind == 0:
                        batch = health_batch(model.model_id, model.run_id, [r for r in rounds if r])
                        self.producer.produce(topics.health, encode("HealthBatch", batch), key)
                        held[i] = []
                else:
                    for signal in signals:
                        self.producer.produce(topics.health, encode("HealthSignal", signal), key)
                if kind == 0:
                    outcome = model.end_epoch()
                    ms = int(time.time() * 1000)
                    self.producer.produce(topics.outcomes, encode("EpochOutcome", outcome), key, timestamp=ms)
                    self.sent[(model.model_id, outcome["epoch"])] = (time.time() * 1000.0, tag)
                self.producer.poll(0)
        self.producer.flush(30)


def latency_runs(env: BenchEnv, models: int, epoch_s: float, epochs_per_run: int, runs: int,
                 policy: str, label: str, straggler_s: float = 30.0, reports: bool = True) -> dict[str, Any]:
    settings = env.settings(partitions=4)
    sims = simulated_models(models, seed=1)
    from schemas import encode

    produce(settings, settings.topics.topology, [(m.model_id.encode(), encode("ModelTopology", m.topology()))
                                                 for m in sims])
    # Confidence threshold 0: the serving gate never turns a decision into WAIT, so (nearly) every
    # decision has a command to time. Exploration stays at its default.
    worker = env.start_worker(settings, name=f"decide-{models}", TAMIYO_POLICY=policy,
                              TAMIYO_CONFIDENCE_THRESHOLD="0", TAMIYO_LOG_LEVEL="info")
    collector = CommandCollector(settings)
    collector.start()
    generator = LoadGenerator(settings, sims, epoch_s, reports)
    try:
        progress(f"  {label}: warm-up epoch ({models} models, one epoch every {epoch_s:.0f}s each)")
        generator.play(1, tag=-1)
        # Wait until the worker has decided the warm-up epoch (it may still be joining the group):
        # commands keep arriving until it has; then two quiet seconds.
        deadline = time.monotonic() + 120
        last, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            if not worker.alive():
                raise RuntimeError(f"worker died:\n{worker.log_tail()}")
            if len(collector.seen) != last:
                last, quiet_since = len(collector.seen), time.monotonic()
            elif last > 0 and time.monotonic() - quiet_since > 2.0:
                break
            time.sleep(0.2)
        if not collector.seen:
            raise RuntimeError(f"no command for {models} warm-up outcomes:\n{worker.log_tail()}")
        usage = CpuShares(worker=[worker.process.pid], broker=[env.broker.pid] if env.broker is not None else [])
        for run in range(runs):
            generator.play(epochs_per_run, tag=run)
            progress(f"  {label}: run {run + 1}/{runs} played")
        cpu_cores = usage.cores()
        # Stragglers: wait while commands keep coming (a saturated worker is still catching up),
        # at most straggler_s.
        deadline = time.monotonic() + straggler_s
        last, quiet_since = len(collector.seen), time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet_since < 3.0:
            time.sleep(0.5)
            if len(collector.seen) != last:
                last, quiet_since = len(collector.seen), time.monotonic()
    finally:
        collector.stop()
        worker.stop()
    counters = [line for line in worker.log_tail(400).splitlines() if "counters" in line]
    if counters:
        progress(f"  {label}: worker {counters[-1].split('counters', 1)[1].strip()[:400]}")
    per_run: list[dict[str, float]] = []
    for run in range(runs):
        sent = {k: v for k, v in generator.sent.items() if v[1] == run}
        lat, arrival = [], []
        for key, (sent_ms, _) in sent.items():
            got = collector.seen.get(key)
            if got is None:
                continue
            record_ms, arrived_ms = got
            # Kafka timestamps are whole ms: the outcome's was truncated from sent_ms.
            lat.append(record_ms - int(sent_ms))
            arrival.append(arrived_ms - sent_ms)
        if not lat:  # nothing decided in time: the worker is saturated; the run has no figure
            per_run.append({"p50": float("nan"), "p99": float("nan"), "max": float("nan"),
                            "arrival_p50": float("nan"), "arrival_p99": float("nan"),
                            "outcomes": len(sent), "commands": 0})
            progress(f"  {label}: run {run + 1}: no command within {straggler_s:.0f}s of the last outcome")
            continue
        per_run.append({"p50": percentile(lat, 50), "p99": percentile(lat, 99), "max": max(lat),
                        "arrival_p50": percentile(arrival, 50), "arrival_p99": percentile(arrival, 99),
                        "outcomes": len(sent), "commands": len(lat)})
        progress(f"  {label}: run {run + 1}: p50 {per_run[-1]['p50']:.1f} ms, p99 {per_run[-1]['p99']:.1f} ms "
                 f"({len(lat)} commands for {len(sent)} outcomes)")
    return {"runs": per_run, "cpu_cores": cpu_cores}


class CpuShares:
    """Cores each side used while the runs played: the worker, the broker (embedded only) and this
    process (load generator and command collector, with their Kafka clients' threads). On a small
    machine they share the cores, and the latency includes waiting for one."""

    def __init__(self, **pids: list[int]) -> None:
        self.pids = {name: p for name, p in pids.items() if p}
        self.t0 = time.monotonic()
        self.start = self._now()

    def _now(self) -> dict[str, float | None]:
        from tamiyo.bench.env import cpu_seconds

        return {"load_generator_and_collector": time.process_time(),
                **{name: cpu_seconds(p) for name, p in self.pids.items()}}

    def cores(self) -> dict[str, float]:
        wall = time.monotonic() - self.t0
        end = self._now()
        return {name: round((end[name] - start) / wall, 2) for name, start in self.start.items()
                if start is not None and end[name] is not None and wall > 0}


def bench_decision(env: BenchEnv, results: Results, cfg: DecisionConfig) -> None:
    scenarios = ((cfg.models, "", cfg.epochs_per_run), (cfg.small_models, "_100", cfg.small_epochs_per_run))
    for models, suffix, epochs in scenarios:
        names = (f"decision_latency_p50_ms{suffix}", f"decision_latency_p99_ms{suffix}")
        target = Target("<=", 50)
        try:
            out = latency_runs(env, models, cfg.epoch_s, epochs, cfg.runs, cfg.policy, f"decisions ({models} models)",
                               reports=cfg.reports)
        except Exception as exc:  # one scenario failing must not lose the other
            for name in names:
                results.skip(name, f"{models} models: {type(exc).__name__}: {exc}"[:400],
                             target if "p99" in name else None)
            continue
        runs = out["runs"]
        outcomes = sum(r["outcomes"] for r in runs)
        commands = sum(r["commands"] for r in runs)
        extra = dict(models=models, epoch_every_s=cfg.epoch_s, policy=cfg.policy,
                     signals_per_s=round(models * 2 * 12 / cfg.epoch_s),  # ~12 layers on average
                     decisions_per_s=round(models / cfg.epoch_s, 1),
                     health_data="HealthBatches" if cfg.reports else "one HealthSignal per message",
                     commands_per_outcome=round(commands / max(outcomes, 1), 3), samples=commands,
                     runs_without_commands=sum(1 for r in runs if not r["commands"]),
                     arrival_p50_ms=[round(r["arrival_p50"], 2) for r in runs],
                     arrival_p99_ms=[round(r["arrival_p99"], 2) for r in runs],
                     max_ms=[r["max"] for r in runs],
                     cpu_cores_used=out["cpu_cores"], machine_cpus=os.cpu_count(),
                     measured="command record timestamp - outcome record timestamp (Kafka, ms)")
        if not any(r["commands"] for r in runs):
            for name in names:
                results.skip(name, f"{models} models: no decision reached the commands topic in time "
                                   "(the worker is saturated)", target if "p99" in name else None)
            continue
        results.add(names[0], [r["p50"] for r in runs], "ms", **extra)
        results.add(names[1], [r["p99"] for r in runs], "ms", target, **extra)
