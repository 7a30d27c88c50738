"""Learning-loop latency: from the end of data collection to workers serving the new champion.

Set-up (the demo's loop, demo-sized): one worker serving ``TAMIYO_POLICY=champion`` (exploration
``epsilon``), a simulated fleet (``tamiyo fleet``, ``models`` models, one epoch every
``epoch_interval_s``) collecting experience for ``collect_s`` seconds. Each run then:

1. t0 = now (the data window ends here: ``TrainConfig.end_ms = t0``);
2. ``training.job.train``: replay, episodes, learner, fitted Q, OPE against the champion (or the
   behaviour policy), MLflow run, register, gate; a challenger the gate refuses is promoted by hand
   (counted in the time; the share is reported) since this measures the loop, not the policy;
3. the worker's champion poller sees the alias move, downloads, validates and swaps;
4. t1 = the Kafka timestamp of the first DecisionRecord made by the new version (the fleet keeps
   running, so decisions keep coming).

The figure is t1 - t0 per run. It includes the poll interval (``TAMIYO_CHAMPION_POLL_SECONDS``,
default 3 s) and up to one fleet epoch for the next decision.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from tamiyo.bench.env import BenchEnv
from tamiyo.bench.harness import Results, progress


@dataclass
class LearningConfig:
    models: int = 50
    epoch_interval_s: float = 1.0
    collect_s: float = 15.0
    train_epochs: int = 20
    epsilon: float = 0.3
    runs: int = 3
    swap_timeout_s: float = 120.0


class DecisionVersions(threading.Thread):
    """Tails the experience topic from its end: first DecisionRecord timestamp (ms) per policy version."""

    def __init__(self, settings: Any) -> None:
        super().__init__(daemon=True, name="decision-versions")
        from confluent_kafka import TopicPartition

        from streams.kafka.clients import make_consumer
        from streams.kafka.reader import end_offsets

        topic = settings.topics.experience
        self.consumer = make_consumer(settings, **{"fetch.wait.max.ms": 20})
        self.consumer.assign([TopicPartition(topic, p, o) for p, o in end_offsets(settings, topic).items()])
        self.first_ms: dict[str, int] = {}
        self.decisions = 0
        self._halt = threading.Event()

    def run(self) -> None:
        from schemas import decode
        from streams.archive import TYPE_HEADER
        from streams.kafka.reader import header

        while not self._halt.is_set():
            for message in self.consumer.consume(1000, timeout=0.1):
                if message.error() is not None or header(message, TYPE_HEADER) != "DecisionRecord":
                    continue
                self.decisions += 1
                version = decode(message.value()).value["policy_version"]
                self.first_ms.setdefault(version, message.timestamp()[1])

    def stop(self) -> None:
        self._halt.set()
        self.join(5)
        self.consumer.close()


def bench_learning(env: BenchEnv, results: Results, cfg: LearningConfig) -> None:
    try:
        from training.job import TrainConfig, train
    except ImportError as exc:
        results.skip("learning_loop_latency_s", f"training.job is not available ({exc})")
        return
    from training.registry import PolicyRegistry, configure_client_env

    configure_client_env()
    saved_uri = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        _bench_learning(env, results, cfg, train, TrainConfig, PolicyRegistry)
    finally:  # mlflow.set_tracking_uri() exported this bench's store into the environment
        if saved_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_uri


def _bench_learning(env: BenchEnv, results: Results, cfg: LearningConfig, train: Any, TrainConfig: Any,
                    PolicyRegistry: Any) -> None:
    settings = env.settings(partitions=4)
    worker = env.start_worker(settings, name="learning-worker", TAMIYO_POLICY="champion",
                              TAMIYO_EPSILON=str(cfg.epsilon), MLFLOW_TRACKING_URI=settings.tracking_uri)
    time.sleep(3.0)
    if not worker.alive():
        results.skip("learning_loop_latency_s", "a worker with TAMIYO_POLICY=champion does not start: "
                     + (worker.log_tail(3).strip().splitlines() or ["(no log)"])[-1][:300])
        return
    tail = DecisionVersions(settings)
    tail.start()
    fleet = env.start_module(settings, "tamiyo.cli", "learning-fleet",
                             args=["fleet", "--models", str(cfg.models), "--duration", "3600",
                                   "--epoch-interval", str(cfg.epoch_interval_s)])
    registry = PolicyRegistry(settings.tracking_uri, settings.registered_model)
    latencies, stages, forced = [], [], 0
    try:
        progress(f"  learning: collecting {cfg.collect_s:.0f}s of experience ({cfg.models} simulated models)")
        deadline = time.monotonic() + cfg.collect_s + 120
        while time.monotonic() < deadline and (tail.decisions < cfg.models or not tail.first_ms):
            _check(worker, fleet)
            time.sleep(0.5)
        time.sleep(cfg.collect_s)
        _check(worker, fleet)
        _warm_imports()
        for run in range(cfg.runs):
            t0_ms = int(time.time() * 1000)
            t0 = time.perf_counter()
            config = TrainConfig(end_ms=t0_ms, epochs=cfg.train_epochs, progress=False)
            result = train(dataclasses.replace(settings, exploration_epsilon=0.0), config)
            trained = time.perf_counter() - t0
            if not result.promoted:
                forced += 1
                registry.promote(result.version, f"benchmark: promoted by hand ({result.reason})", by="tamiyo bench")
            promoted_at = time.perf_counter()
            wanted = registry.version_string(result.version)
            swap_deadline = time.monotonic() + cfg.swap_timeout_s
            while wanted not in tail.first_ms and time.monotonic() < swap_deadline:
                _check(worker, fleet)
                time.sleep(0.1)
            if wanted not in tail.first_ms:
                raise RuntimeError(f"no decision from {wanted} within {cfg.swap_timeout_s:.0f}s; worker log:\n"
                                   f"{worker.log_tail()}")
            latency = (tail.first_ms[wanted] - t0_ms) / 1000.0
            latencies.append(latency)
            stages.append({k: round(v, 2) for k, v in result.seconds.items()}
                          | {"train_call": round(trained, 2), "promote": round(promoted_at - t0 - trained, 2),
                             "until_serving": round(latency - (promoted_at - t0), 2),
                             "transitions": result.n_transitions})
            progress(f"  learning run {run + 1}/{cfg.runs}: {latency:.1f}s to serving {wanted} "
                     f"(train {trained:.1f}s: {stages[-1]}; gate {'passed' if result.promoted else 'refused'})")
    finally:
        tail.stop()
        fleet.stop()
        worker.stop()
    mid = sorted(range(len(latencies)), key=latencies.__getitem__)[len(latencies) // 2]
    results.add("learning_loop_latency_s", latencies, "s", models=cfg.models, collect_s=cfg.collect_s,
                train_epochs=cfg.train_epochs, learner=config.learner, stages_s=stages[mid],
                promoted_by_hand=f"{forced}/{cfg.runs}",
                champion_poll_s=settings.champion_poll_seconds,
                measured="first DecisionRecord of the new version (Kafka timestamp) - end of data window")


def _warm_imports() -> None:
    """Import what the job imports lazily (torch_geometric, mlflow, learners): a one-time cost of the
    process, not of the loop."""
    import mlflow  # noqa: F401
    import mlflow.artifacts  # noqa: F401

    import training.evaluation  # noqa: F401
    import training.learners  # noqa: F401
    import training.plots  # noqa: F401
    import training.qfit  # noqa: F401
    from models.checkpoint import save_policy  # noqa: F401


def _check(*procs: Any) -> None:
    for p in procs:
        if not p.alive():
            raise RuntimeError(f"{p.log_path.name} exited:\n{p.log_tail()}")
