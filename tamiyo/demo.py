"""``tamiyo demo``: broker, topics, a worker, real hosts and a simulated fleet; live progress; summary.

Every figure in the summary is counted from the topics themselves (the experience archive and the
dead-letter topic), not from the processes' own claims.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from confluent_kafka import TopicPartition
from tqdm import tqdm

from schemas import DecodeError, decode, encode
from schemas.health_batch import batch_size
from streams.archive import TYPE_HEADER
from streams.kafka.admin import ensure_topics
from streams.kafka.clients import make_consumer, make_producer
from streams.kafka.reader import end_offsets, header, partitions_of
from tamiyo.config import Settings
from tamiyo.demo_options import DemoOptions

log = logging.getLogger(__name__)


class Tally(threading.Thread):
    """Tails the experience and dead-letter topics from given offsets and counts what it sees."""

    def __init__(self, settings: Settings, start: dict[str, dict[int, int]]) -> None:
        super().__init__(daemon=True, name="tally")
        self.settings = settings
        self.start_offsets = start
        self.types: Counter[str] = Counter()
        self.applied = 0
        self.models: set[str] = set()
        self.policy_versions: Counter[str] = Counter()
        self.last_policy_version = "none"
        self.last_decision_ms = 0
        self.dead_letters = 0
        self.total = 0
        self.signals = 0  # HealthSignals, alone or in HealthReports
        self.last_change = time.monotonic()
        self._halt = threading.Event()

    def run(self) -> None:
        consumer = make_consumer(self.settings)
        topics = self.settings.topics
        assignment = []
        for topic in (topics.experience, topics.deadletter):
            for p in partitions_of(consumer, topic):
                assignment.append(TopicPartition(topic, p, self.start_offsets.get(topic, {}).get(p, 0)))
        consumer.assign(assignment)
        try:
            while not self._halt.is_set():
                for message in consumer.consume(num_messages=2000, timeout=0.2):
                    if message.error() is None:
                        self._count(message)
        finally:
            consumer.close()

    def _count(self, message: Any) -> None:
        self.last_change = time.monotonic()
        if message.topic() == self.settings.topics.deadletter:
            self.dead_letters += 1
            return
        self.total += 1
        kind = header(message, TYPE_HEADER) or "unknown"
        self.types[kind] += 1
        if kind == "HealthSignal":
            self.signals += 1
        if kind in ("ModelTopology", "DecisionRecord", "CommandOutcome", "HealthReport", "HealthBatch"):
            try:
                record = decode(message.value()).value
            except DecodeError:
                return
            if kind == "HealthReport":
                self.signals += len(record["signals"])
            elif kind == "HealthBatch":
                self.signals += batch_size(record)
            elif kind == "ModelTopology":
                self.models.add(record["model_id"])
            elif kind == "DecisionRecord":
                self.policy_versions[record["policy_version"]] += 1
                if record["timestamp_ms"] >= self.last_decision_ms:
                    self.last_decision_ms = record["timestamp_ms"]
                    self.last_policy_version = record["policy_version"]
            elif record["status"] == "APPLIED":
                self.applied += 1

    def stop(self) -> None:
        self._halt.set()

    def summary(self) -> dict[str, Any]:
        return {
            "models": len(self.models),
            "health_signals": self.signals,
            "health_messages": self.types["HealthBatch"] + self.types["HealthReport"] + self.types["HealthSignal"],
            "decisions": self.types["DecisionRecord"],
            "commands_sent": self.types["AdaptationCommand"],
            "commands_applied": self.applied,
            "experience_records": self.total,
            "dead_letters": self.dead_letters,
            "policy_version": self.last_policy_version,
            "epoch_outcomes": self.types["EpochOutcome"],
            "command_outcomes": self.types["CommandOutcome"],
        }


def bad_messages(count: int, seed: int = 0) -> list[tuple[bytes | None, bytes]]:
    """A few kinds of malformed input, to show the dead-letter path in the demo."""
    rng = random.Random(seed)
    good = encode("EpochOutcome", {"model_id": "demo-bad", "run_id": "r", "epoch": 0, "timestamp_ms": 0,
                                   "train_loss": 1.0, "val_loss": 1.0, "train_accuracy": 0.5,
                                   "val_accuracy": 0.5, "parameter_count": 1, "final": False})
    kinds = [
        (b"demo-bad", bytes(rng.getrandbits(8) for _ in range(40))),  # random bytes
        (b"demo-bad", good[:15]),  # truncated Avro
        (b"demo-bad", b"\x00\x01" + good[2:]),  # wrong header
        (b"someone-else", good),  # key disagrees with model id
        (None, good),  # empty key
    ]
    return [kinds[i % len(kinds)] for i in range(count)]


def _spawn(args: list[str], env: dict[str, str], log_path: Path, nice: int = 0) -> subprocess.Popen:
    """``tamiyo <args>`` in its own session; ``nice`` > 0 runs it at a lower CPU priority."""
    handle = open(log_path, "ab")
    return subprocess.Popen([sys.executable, "-m", "tamiyo.cli", *args], env=env, stdout=handle,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=(lambda: os.nice(nice)) if nice > 0 else None)


def _stop(process: subprocess.Popen, timeout: float = 20.0, sig: int = signal.SIGTERM) -> None:
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_demo(settings: Settings, options: DemoOptions) -> dict[str, Any]:
    """Run the demo; with ``options.learning`` the whole loop: collect, train, promote, hot-swap."""
    from tamiyo.broker import start_broker

    if options.learning:
        from training.job import TrainConfig

        TrainConfig(learner=options.learner).validate()  # a wrong --learner fails now, not after collecting
    workdir = settings.data_dir / "demo"
    broker = None
    if not settings.bootstrap_servers:
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        settings = dataclasses.replace(settings, data_dir=workdir)
        broker = start_broker(settings)
        settings = dataclasses.replace(settings, bootstrap_servers=broker.bootstrap)
        print(f"broker: {type(broker).__name__} at {broker.bootstrap}")
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    processes: list[subprocess.Popen] = []
    tally = None
    learning: dict[str, Any] = {}
    try:
        ensure_topics(settings)
        topics = settings.topics
        start = {t: end_offsets(settings, t) for t in (topics.experience, topics.deadletter)}
        tally = Tally(settings, start)
        tally.start()
        env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=settings.bootstrap_servers,
                   TAMIYO_TOPIC_PREFIX=settings.topic_prefix, TAMIYO_DATA_DIR=str(settings.data_dir),
                   TAMIYO_PARTITIONS=str(settings.partitions), TAMIYO_EPSILON=str(options.epsilon))
        if options.learning:
            env.update(TAMIYO_POLICY="champion", MLFLOW_TRACKING_URI=settings.tracking_uri,
                       TAMIYO_CHAMPION_POLL_SECONDS=str(options.champion_poll_s))
        worker = _spawn(["worker"], env, logs / "worker.log")
        processes.append(worker)
        _wait_ready(worker, logs / "worker.log", options.worker_ready_timeout_s)
        hosts = [_spawn(["host", "--model-id", f"demo-host-{i}", "--epochs", str(options.host_epochs),
                         "--seed", str(i)], env, logs / f"host-{i}.log", nice=options.host_nice)
                 for i in range(options.hosts)]
        processes += hosts
        fleet = _spawn(["fleet", "--models", str(options.fleet_models), "--duration", str(24 * 3600),
                        "--epoch-interval", str(options.fleet_epoch_interval_s), "--seed", str(settings.seed),
                        "--max-worker-lag", str(options.fleet_max_lag_rounds * options.fleet_models * 2)],
                       env, logs / "fleet.log")
        processes.append(fleet)
        _inject(settings, options.bad_messages)
        collect_s = options.duration_s / 2 if options.learning else options.duration_s
        _progress(tally, collect_s, processes, "collect" if options.learning else "demo")
        if options.learning and tally.summary()["decisions"] < options.collect_min_decisions:
            # A slow machine decides less in the same time; the learner needs enough of them.
            _progress(tally, max(options.collect_max_s - collect_s, 0.0), processes,
                      f"collect until {options.collect_min_decisions} decisions",
                      done=lambda s: s["decisions"] >= options.collect_min_decisions)
        if options.learning:
            learning = _learn_and_swap(settings, options, tally, processes)
            if learning["learned_policy_version"] != "none":
                _progress(tally, options.duration_s - collect_s, processes, "learned")
            else:
                print("no learned policy is serving: the second traffic phase is skipped")
        for host in hosts:
            try:
                host.wait(timeout=max(5.0, options.drain_timeout_s))
            except subprocess.TimeoutExpired:
                _stop(host)
        _stop(fleet, timeout=30, sig=signal.SIGINT)
        _drain(tally, options.drain_timeout_s)
        if worker.poll() is not None:
            print(f"warning: the worker exited early with code {worker.returncode}; see {logs / 'worker.log'}")
    finally:
        for process in reversed(processes):
            _stop(process)
        if tally is not None:
            tally.stop()
            tally.join(timeout=5)
    try:
        summary = tally.summary() if tally else {}
        if options.learning and tally is not None:
            summary |= learning | _rewards_by_phase(settings, start[settings.topics.experience], learning)
    finally:
        if broker is not None:
            broker.stop()
    print(json.dumps(summary, indent=2))
    print(f"logs: {logs}")
    if options.summary_path:
        Path(options.summary_path).parent.mkdir(parents=True, exist_ok=True)
        Path(options.summary_path).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _learn_and_swap(settings: Settings, options: DemoOptions, tally: Tally,
                    processes: list[subprocess.Popen]) -> dict[str, Any]:
    """Train on the replayed experience so far, let the gate judge, wait for the hot swap."""
    from training.job import TrainConfig, train
    from training.registry import PolicyRegistry

    print("training a policy on the replayed experience topic ...")
    config = TrainConfig(learner=options.learner, end_ms=int(time.time() * 1000), epochs=options.train_epochs,
                         progress=True)
    result = train(dataclasses.replace(settings, exploration_epsilon=0.0), config)
    print(f"challenger v{result.version}: {'promoted' if result.promoted else 'not promoted'} ({result.reason})")
    registry = PolicyRegistry(settings.tracking_uri, settings.registered_model)
    champion = registry.champion()
    swapped_to = None
    if result.promoted:
        wanted = registry.version_string(result.version)
        deadline = time.monotonic() + options.swap_timeout_s
        while time.monotonic() < deadline and wanted not in tally.policy_versions:
            if processes[0].poll() is not None:
                break
            time.sleep(0.5)
        swapped_to = wanted if wanted in tally.policy_versions else None
        print(f"workers serving {wanted}" if swapped_to else f"warning: no decision from {wanted} yet")
    versions = registry.client.search_model_versions(f"name='{settings.registered_model}'")
    return {
        "policy_versions_registered": len(versions),
        "champion_version": champion.version if champion else "none",
        "learned_policy_version": swapped_to or "none",
        "gate_reason": result.reason,
        "training_transitions": result.n_transitions,
    }


def _rewards_by_phase(settings: Settings, start: dict[int, int], learning: dict[str, Any]) -> dict[str, Any]:
    """Mean decision reward (see training.episodes) before and after the swap, from the topic."""
    from training.episodes import COMMANDS_UNDECODED, EPISODE_TYPES, RewardConfig, group_episodes, transitions
    from training.replay import replay

    records, _ = replay(settings, start_offsets=start, progress=False, types=EPISODE_TYPES,
                        undecoded=COMMANDS_UNDECODED)
    decided = [r for r in records if r.name == "DecisionRecord"]
    versions: list[str] = []
    for record in sorted(decided, key=lambda r: r.value["timestamp_ms"]):
        if not versions or versions[-1] != record.value["policy_version"]:
            versions.append(record.value["policy_version"])
    steps = transitions(group_episodes(records), RewardConfig(), max(r.timestamp_ms for r in records))
    learned = learning.get("learned_policy_version", "none")
    before = [t.reward for t in steps if t.policy_version != learned]
    after = [t.reward for t in steps if t.policy_version == learned]
    return {
        "hot_swaps": max(0, len(versions) - 1),
        "mean_reward_before": round(float(sum(before) / len(before)), 5) if before else None,
        "mean_reward_after": round(float(sum(after) / len(after)), 5) if after else None,
        "decisions_before": len(before),
        "decisions_after": len(after),
    }


def _wait_ready(worker: subprocess.Popen, log_path: Path, timeout: float) -> None:
    """Wait for Faust's "Worker: Ready" (imports of torch + PyG take a while on a cold machine)."""
    deadline = time.monotonic() + timeout
    with tqdm(desc="worker starting", unit="s", leave=False) as bar:
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited with code {worker.returncode}; see {log_path}")
            if "[^Worker]: Ready" in log_path.read_text(errors="replace"):
                return
            time.sleep(0.5)
            bar.update(0.5)
    raise TimeoutError(f"the worker was not ready after {timeout:.0f}s; see {log_path}")


def _inject(settings: Settings, count: int) -> None:
    if count <= 0:
        return
    producer = make_producer(settings)
    for key, value in bad_messages(count, settings.seed):
        producer.produce(settings.topics.outcomes, key=key, value=value)
    producer.flush(10)


def _progress(tally: Tally, duration_s: float, processes: list[subprocess.Popen], phase: str,
              done: Callable[[dict[str, Any]], bool] | None = None) -> None:
    """Show the tally for ``duration_s`` seconds, or until ``done(tally summary)`` or the worker exits."""
    started = time.monotonic()
    with tqdm(total=int(duration_s), unit="s", desc=phase, dynamic_ncols=True) as bar:
        while (elapsed := time.monotonic() - started) < duration_s:
            time.sleep(1.0)
            bar.n = min(int(elapsed), int(duration_s))
            s = tally.summary()
            bar.set_postfix(models=s["models"], signals=s["health_signals"], decisions=s["decisions"],
                            applied=s["commands_applied"], dlq=s["dead_letters"], refresh=False)
            bar.refresh()
            if done is not None and done(s):
                return
            if processes[0].poll() is not None:
                print(f"worker exited with code {processes[0].returncode}")
                return


def _drain(tally: Tally, timeout: float) -> None:
    """Wait until the archive has been quiet for 3 s (the worker caught up), at most ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and time.monotonic() - tally.last_change < 3.0:
        time.sleep(0.5)
