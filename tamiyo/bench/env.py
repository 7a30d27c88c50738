"""What the Kafka benchmarks share: the broker, fresh topic sets, worker processes, realistic data.

The broker is ``KAFKA_BOOTSTRAP_SERVERS`` when set, else an embedded Apache Kafka node in a temporary
folder. Every measurement gets its own topic prefix (so its own topics and Faust consumer group).
Data comes from ``hosts.simulation.SimulatedModel`` (8–16 layers, 4 seeds, the fleet's telemetry).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from tamiyo.bench.harness import progress
from tamiyo.config import Settings

Record = tuple[bytes, bytes]  # (key, value)


class BenchEnv:
    """Broker + scratch folder for one bench run. Use as a context manager."""

    def __init__(self, workdir: Path | None = None) -> None:
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="tamiyo-bench-"))
        self.broker: Any = None
        self.bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
        self.workers: list[WorkerProcess] = []

    def __enter__(self) -> "BenchEnv":
        if not self.bootstrap:
            from tamiyo.broker import EmbeddedKafka

            progress("starting the embedded Apache Kafka broker")
            self.broker = EmbeddedKafka(self.workdir / "kafka")
            self.bootstrap = self.broker.start(timeout=300)
            progress(f"broker ready on {self.bootstrap}")
        else:
            progress(f"using the broker at {self.bootstrap} (KAFKA_BOOTSTRAP_SERVERS)")
        return self

    def __exit__(self, *exc: object) -> None:
        for worker in self.workers:
            worker.stop()
        if self.broker is not None:
            self.broker.stop()
        if self._own_dir and not os.environ.get("TAMIYO_BENCH_KEEP"):
            shutil.rmtree(self.workdir, ignore_errors=True)
        elif self._own_dir:
            progress(f"kept the bench folder {self.workdir} (TAMIYO_BENCH_KEEP)")

    @property
    def broker_kind(self) -> str:
        return "embedded Apache Kafka" if self.broker is not None else f"external ({self.bootstrap})"

    def settings(self, partitions: int = 4, create: bool = True, **overrides: Any) -> Settings:
        """Settings with a fresh topic prefix; the Tamiyo topics are created unless ``create=False``."""
        prefix = "b" + uuid.uuid4().hex[:8]
        data_dir = self.workdir / prefix
        data_dir.mkdir(parents=True, exist_ok=True)
        # Every topic set gets its own sqlite registry: never the caller's MLFLOW_TRACKING_URI (mlflow
        # exports the last URI it was given into the environment of this process).
        overrides.setdefault("mlflow_tracking_uri", f"sqlite:///{(data_dir / 'mlflow' / 'mlflow.db').resolve()}")
        settings = Settings.from_env(bootstrap_servers=self.bootstrap, topic_prefix=prefix, data_dir=data_dir,
                                     partitions=partitions, broker="auto", **overrides)
        if create:
            from streams.kafka.admin import ensure_topics

            ensure_topics(settings)
        return settings

    def start_worker(self, settings: Settings, name: str = "worker", **env: str) -> "WorkerProcess":
        worker = WorkerProcess(settings, self.workdir / f"{settings.topic_prefix}-{name}.log", **env)
        self.workers.append(worker)
        return worker

    def start_module(self, settings: Settings, module: str, name: str, args: list[str] | None = None,
                     **env: str) -> "WorkerProcess":
        worker = WorkerProcess(settings, self.workdir / f"{settings.topic_prefix}-{name}.log", module=module,
                               args=args, **env)
        self.workers.append(worker)
        return worker


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=settings.bootstrap_servers,
        TAMIYO_TOPIC_PREFIX=settings.topic_prefix,
        TAMIYO_DATA_DIR=str(settings.data_dir),
        TAMIYO_PARTITIONS=str(settings.partitions),
        TAMIYO_LOG_LEVEL=extra.pop("TAMIYO_LOG_LEVEL", "warn"),
        MLFLOW_DISABLE_TELEMETRY="true",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class WorkerProcess:
    """``python -m tamiyo.cli worker`` (or another module) as a child process with its own log file."""

    def __init__(self, settings: Settings, log_path: Path, module: str | None = None, args: list[str] | None = None,
                 **env: str) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")
        cmd = [sys.executable, "-m", module] if module else [sys.executable, "-m", "tamiyo.cli", "worker"]
        cmd += args or []
        environ = worker_env(settings, **env)
        # TAMIYO_BENCH_CODE_DIR: run the processes from another checkout (before/after comparisons).
        code_dir = os.environ.get("TAMIYO_BENCH_CODE_DIR") or str(Path(__file__).resolve().parents[2])
        environ["PYTHONPATH"] = os.pathsep.join(p for p in (code_dir, environ.get("PYTHONPATH", "")) if p)
        self.process = subprocess.Popen(cmd, env=environ, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True, cwd=code_dir)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if not self._log.closed:
            self._log.close()
        return self.process.returncode

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# --------------------------------------------------------------------------- data


class SignalSource:
    """Encoded records of ``models`` simulated models: their topologies, and fresh HealthSignals on demand
    (whole rounds of one signal per layer, model after model, timestamped when generated)."""

    def __init__(self, models: int, seed: int = 0) -> None:
        from schemas import encode

        self.models = simulated_models(models, seed)
        self.topologies: list[Record] = [(m.model_id.encode(), encode("ModelTopology", m.topology()))
                                         for m in self.models]

    def signals(self, count: int) -> list[Record]:
        """``count`` HealthSignals, one message each (how hosts sent them before HealthBatches)."""
        from schemas import encode

        out: list[Record] = []
        while len(out) < count:
            for m in self.models:
                key = m.model_id.encode()
                out.extend((key, encode("HealthSignal", s)) for s in m.health_signals())
        return out[:count]

    def batches(self, signals: int, reports_per_batch: int) -> tuple[list[Record], int]:
        """HealthBatches of ``reports_per_batch`` rounds each (one message per model and that many rounds,
        as hosts send them) carrying at least ``signals`` signals; returns them and the exact number of signals."""
        from schemas import encode
        from schemas.health_batch import health_batch

        out: list[Record] = []
        carried = 0
        while carried < signals:
            for m in self.models:
                rounds = [m.health_signals() for _ in range(reports_per_batch)]
                out.append((m.model_id.encode(), encode("HealthBatch", health_batch(m.model_id, m.run_id, rounds))))
                carried += sum(len(r) for r in rounds)
                if carried >= signals:
                    break
        return out, carried


def simulated_models(count: int, seed: int = 0, epochs_per_run: int = 1000) -> list[Any]:
    from hosts.simulation import SimulatedModel

    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(count)]
    return [SimulatedModel(f"bench-{seed}-{i:05d}", rng, epochs_per_run=epochs_per_run) for i, rng in enumerate(rngs)]


def produce(settings: Settings, topic: str, records: list[Record], **overrides: Any) -> float:
    """Produce everything (acks=all) and wait for delivery; returns records/s."""
    from streams.kafka.clients import make_producer

    conf = {"linger.ms": 20, "batch.num.messages": 10_000, "queue.buffering.max.messages": 2_000_000,
            "queue.buffering.max.kbytes": 1_048_576, "compression.type": "none"} | overrides
    producer = make_producer(settings, **conf)
    started = time.perf_counter()
    for i, (key, value) in enumerate(records):
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10_000 == 0:
            producer.poll(0)
    left = producer.flush(120)
    if left:
        raise RuntimeError(f"{left} records to {topic} were not delivered")
    return len(records) / max(time.perf_counter() - started, 1e-9)


def topic_total(settings: Settings, topic: str, consumer: Any = None) -> int:
    """Sum of the partitions' high watermarks (records ever written, for a fresh topic)."""
    from streams.kafka.clients import make_consumer
    from streams.kafka.reader import high_watermarks

    own = consumer is None
    consumer = consumer or make_consumer(settings)
    try:
        return sum(high_watermarks(consumer, topic).values())
    finally:
        if own:
            consumer.close()


def _partitions(consumer: Any, topic: str, timeout: float = 30.0) -> list[int]:
    """Partitions of a topic, waiting for a topic created a moment ago to show up in the metadata."""
    from streams.kafka.reader import partitions_of

    deadline = time.monotonic() + timeout
    while True:
        try:
            return partitions_of(consumer, topic)
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


class OffsetWatch:
    """Samples the total end offset of a topic over time (progress of whatever writes to it)."""

    def __init__(self, settings: Settings, topic: str) -> None:
        from confluent_kafka import TopicPartition

        from streams.kafka.clients import make_consumer

        self.consumer = make_consumer(settings)
        self.parts = [TopicPartition(topic, p) for p in _partitions(self.consumer, topic)]
        self.samples: list[tuple[float, int]] = []
        self.pids: list[int] = []  # processes whose CPU time is sampled along (see cpu_per_record)
        self.cpu: list[float | None] = []

    def sample(self) -> int:
        from streams.kafka.reader import watermarks  # retries while a new topic has no leader yet

        total = sum(watermarks(self.consumer, tp.topic, tp.partition)[1] for tp in self.parts)
        self.samples.append((time.monotonic(), total))
        self.cpu.append(cpu_seconds(self.pids) if self.pids else None)
        return total

    def reset(self) -> None:
        self.samples.clear()
        self.cpu.clear()

    def close(self) -> None:
        self.consumer.close()


class CommittedWatch(OffsetWatch):
    """Samples the sum of a consumer group's committed offsets on a topic (its progress)."""

    def __init__(self, settings: Settings, group: str, topic: str) -> None:
        from confluent_kafka import TopicPartition

        from streams.kafka.clients import make_consumer

        self.consumer = make_consumer(settings, group_id=group, **{"enable.auto.commit": False})
        self.parts = [TopicPartition(topic, p) for p in _partitions(self.consumer, topic)]
        self.samples = []
        self.pids = []
        self.cpu = []

    def sample(self) -> int:
        committed = self.consumer.committed(self.parts, timeout=10.0)
        total = sum(max(tp.offset, 0) for tp in committed)
        self.samples.append((time.monotonic(), total))
        self.cpu.append(cpu_seconds(self.pids) if self.pids else None)
        return total


def steady_rate(samples: list[tuple[float, int]], total: int, lo: float = 0.1, hi: float = 0.9) -> float:
    """Rate (records/s) between the first samples at or above ``lo`` and ``hi`` of ``total``.

    Start-up (group join, first fetch) and the drain tail are outside the window. When the run did
    not reach ``hi``, the last sample closes the window.
    """
    start = next(((t, n) for t, n in samples if n >= lo * total), None)
    if start is None:
        raise RuntimeError(f"no progress: {samples[-1][1] if samples else 0} of {total}")
    end = next(((t, n) for t, n in samples if n >= hi * total), samples[-1])
    if end[0] <= start[0] or end[1] <= start[1]:
        raise RuntimeError("not enough samples to measure a rate")
    return (end[1] - start[1]) / (end[0] - start[0])


def _window(samples: list[tuple[float, int]], total: int, lo: float, hi: float) -> tuple[int, int]:
    start = next((i for i, (_, n) in enumerate(samples) if n >= lo * total), None)
    if start is None:
        raise RuntimeError(f"no progress: {samples[-1][1] if samples else 0} of {total}")
    end = next((i for i, (_, n) in enumerate(samples) if n >= hi * total), len(samples) - 1)
    return start, end


def cpu_per_record(watch: OffsetWatch, total: int, lo: float = 0.1, hi: float = 0.9,
                   offset: int = 0) -> float | None:
    """CPU microseconds the watched processes spent per record in the same window as steady_rate
    (independent of how busy the rest of the machine is, unlike the rate)."""
    shifted = [(t, n - offset) for t, n in watch.samples]
    try:
        i, j = _window(shifted, total, lo, hi)
    except RuntimeError:
        return None
    a, b = watch.cpu[i], watch.cpu[j]
    records = shifted[j][1] - shifted[i][1]
    if a is None or b is None or records <= 0:
        return None
    return (b - a) / records * 1e6


def cpu_seconds(pids: list[int]) -> float | None:
    """User + system CPU seconds of the processes ``pids`` so far (None when one cannot be read)."""
    try:
        import psutil

        total = 0.0
        for pid in pids:
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
        return total
    except Exception:
        return None


def watch_until(watch: OffsetWatch, total: int, timeout: float, alive: Callable[[], bool] = lambda: True,
                interval: float = 0.2, label: str = "") -> list[tuple[float, int]]:
    """Sample until the topic reaches ``total`` records, the process dies or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    last_print = 0.0
    while time.monotonic() < deadline:
        n = watch.sample()
        now = time.monotonic()
        if label and now - last_print > 5.0:
            progress(f"    {label}: {n:,}/{total:,}")
            last_print = now
        if n >= total:
            break
        if not alive():
            raise RuntimeError(f"{label or 'process'} died")
        time.sleep(interval)
    return watch.samples


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
