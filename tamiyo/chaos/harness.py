"""What the chaos scenarios share: a broker, fresh settings, child processes, and an observer of the topics.

Every figure a scenario reports is counted from the topics themselves (input topics, the experience
archive, the dead-letter topic, the commands topic), never from a process's own claims.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from schemas import DecodeError, decode
from streams.archive import SOURCE_HEADER, TYPE_HEADER
from streams.kafka.clients import make_consumer, make_producer
from streams.kafka.reader import header, partitions_of, read_topic, watermarks
from tamiyo.config import KafkaSecurity, Settings

REPO = Path(__file__).resolve().parents[2]
Pos = tuple[str, int, int]  # (topic, partition, offset)

# Inherited variables that would change what a chaos worker does; the scenarios set their own.
_KEEP_PREFIXES = ("KAFKA_SECURITY_", "KAFKA_SASL_", "KAFKA_SSL_", "TAMIYO_CACHE_DIR", "TAMIYO_KAFKA_VERSION",
                  "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")

_T0 = time.monotonic()
#: TAMIYO_BROKER_SESSION_TIMEOUT of every chaos worker: a killed worker's partitions move after this.
SESSION_TIMEOUT_S = 10
_QUIET = logging.getLogger("tamiyo.chaos.librdkafka")  # client chatter while brokers restart
_QUIET.setLevel(logging.CRITICAL)


def progress(message: str) -> None:
    print(f"[chaos {time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.2,
               what: str = "condition", alive: Callable[[], bool] = lambda: True) -> float:
    """Poll until ``condition()``; returns the seconds waited. Raises TimeoutError / RuntimeError."""
    started = time.monotonic()
    while not condition():
        if not alive():
            raise RuntimeError(f"a process died while waiting for {what}")
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what} not reached within {timeout:.0f}s")
        time.sleep(interval)
    return time.monotonic() - started


# --------------------------------------------------------------------------- processes


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a Tamiyo child process on ``settings`` (inherited TAMIYO_* knobs removed)."""
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith(("TAMIYO_", "KAFKA_", "MLFLOW_", "BROKER_")) and not k.startswith(_KEEP_PREFIXES))}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=settings.bootstrap_servers,
        TAMIYO_TOPIC_PREFIX=settings.topic_prefix,
        TAMIYO_DATA_DIR=str(settings.data_dir),
        TAMIYO_PARTITIONS=str(settings.partitions),
        TAMIYO_LOG_LEVEL="info",
        MLFLOW_DISABLE_TELEMETRY="true",
        PYTHONUNBUFFERED="1",
        TAMIYO_BROKER_SESSION_TIMEOUT=str(SESSION_TIMEOUT_S),
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


class ChildProcess:
    """A child in its own process group, with its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, name: str) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.started_at = 0.0
        self.start()

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as handle:
            handle.write(f"\n===== chaos: starting {self.name} {time.ctime()} =====\n".encode())
            handle.flush()
            self._log_offset = handle.tell()
            self.process = subprocess.Popen(self.args, env=self.env, stdout=handle, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True, cwd=str(REPO))
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def kill(self) -> float:
        """SIGKILL the whole process group (no shutdown at all); returns the time of the kill."""
        killed_at = time.monotonic()
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
        return killed_at

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGTERM)
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
            except ProcessLookupError:
                pass
        return self.returncode

    def log(self, since_start: bool = True) -> str:
        try:
            with open(self.log_path, "rb") as handle:
                if since_start:
                    handle.seek(self._log_offset)
                return handle.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log(False).splitlines()[-lines:])

    def wait_for_log(self, text: str, timeout: float) -> float:
        try:
            return wait_until(lambda: text in self.log(), timeout, 0.3, f"{self.name}: {text!r}", self.alive)
        except (TimeoutError, RuntimeError) as exc:
            raise type(exc)(f"{exc}; log tail:\n{self.log_tail()}") from None


class WorkerProcess(ChildProcess):
    """``python -m tamiyo.cli worker``."""

    READY = "[^Worker]: Ready"

    def __init__(self, settings: Settings, log_path: Path, name: str = "worker", module: str = "tamiyo.cli",
                 **env: str) -> None:
        self.settings = settings
        super().__init__([sys.executable, "-m", module, "worker"], child_env(settings, **env), log_path, name)

    def restart(self) -> None:
        self.start()

    def wait_ready(self, timeout: float = 180.0) -> float:
        return self.wait_for_log(self.READY, timeout)


# --------------------------------------------------------------------------- environment


class ChaosEnv:
    """The broker (``KAFKA_BOOTSTRAP_SERVERS``, else an embedded Apache Kafka) and a scratch folder."""

    def __init__(self, workdir: Path | None = None, bootstrap: str | None = None, keep: bool = False) -> None:
        self._own_dir = workdir is None and not keep
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="tamiyo-chaos-")).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.bootstrap = bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
        self.broker: Any = None
        self.children: list[ChildProcess] = []
        self.brokers: list[Any] = []

    def __enter__(self) -> "ChaosEnv":
        if not self.bootstrap:
            self.broker = self.embedded_broker("kafka")
            progress(f"embedded Apache Kafka ready on {self.bootstrap}")
        return self

    def embedded_broker(self, name: str) -> Any:
        """Start an embedded Apache Kafka node in ``workdir/name`` (the first one becomes the shared broker)."""
        from tamiyo.broker import EmbeddedKafka

        broker = EmbeddedKafka(self.workdir / name)
        broker.start(timeout=300)
        self.brokers.append(broker)
        if not self.bootstrap:
            self.bootstrap = broker.bootstrap
        return broker

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        for child in reversed(self.children):
            child.stop(10)
        self.children.clear()
        for broker in reversed(self.brokers):
            broker.stop()
        self.brokers.clear()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def settings(self, name: str, partitions: int = 4, bootstrap: str | None = None, create: bool = True,
                 **overrides: Any) -> Settings:
        """Settings with a topic prefix of their own (so their own topics and consumer group)."""
        prefix = f"chaos-{name.replace('_', '-')}-{uuid.uuid4().hex[:6]}"
        data_dir = self.workdir / prefix
        data_dir.mkdir(parents=True, exist_ok=True)
        # Defaults, not the caller's TAMIYO_* environment: the children do not inherit it either.
        settings = Settings(bootstrap_servers=bootstrap or self.bootstrap, topic_prefix=prefix, data_dir=data_dir,
                            partitions=partitions, security=KafkaSecurity.from_env(), **overrides)
        settings.validate()
        if create:
            from streams.kafka.admin import ensure_topics

            ensure_topics(settings)
        return settings

    def start_worker(self, settings: Settings, name: str = "worker", **env: str) -> WorkerProcess:
        """A worker with a data folder of its own (two workers never share one)."""
        data_dir = settings.data_dir / name
        data_dir.mkdir(parents=True, exist_ok=True)
        env.setdefault("TAMIYO_DATA_DIR", str(data_dir))
        worker = WorkerProcess(settings, settings.data_dir / f"{name}.log", name=name, **env)
        self.children.append(worker)
        return worker

    def start_cli(self, settings: Settings, args: list[str], name: str, **env: str) -> ChildProcess:
        child = ChildProcess([sys.executable, "-m", "tamiyo.cli", *args], child_env(settings, **env),
                             settings.data_dir / f"{name}.log", name)
        self.children.append(child)
        return child

    def start_command(self, args: list[str], env: dict[str, str], log_path: Path, name: str) -> ChildProcess:
        child = ChildProcess(args, env, log_path, name)
        self.children.append(child)
        return child


# --------------------------------------------------------------------------- the fleet


class FleetThread(threading.Thread):
    """``hosts.fleet.run_fleet`` in a thread, stoppable; ``stats`` once it has finished."""

    def __init__(self, settings: Settings, models: int, epoch_interval_s: float, seed: int = 0,
                 duration_s: float | None = None, epochs_per_run: int = 20, signals_per_epoch: int = 2) -> None:
        super().__init__(daemon=True, name=f"fleet-{seed}")
        self.settings = settings
        self.kwargs = dict(models=models, duration_s=duration_s, epoch_interval_s=epoch_interval_s, seed=seed,
                           epochs_per_run=epochs_per_run, signals_per_epoch=signals_per_epoch)
        self.halt = threading.Event()
        self.stats: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        from hosts.fleet import run_fleet

        try:
            self.stats = run_fleet(self.settings, stop_event=self.halt, **self.kwargs)
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def finish(self, timeout: float = 60.0) -> Any:
        self.halt.set()
        self.join(timeout)
        if self.error is not None:
            raise RuntimeError(f"the fleet failed: {self.error!r}") from self.error
        return self.stats


# --------------------------------------------------------------------------- observing the topics


@dataclass
class Decision:
    seen_at: float  # monotonic time the observer read it
    model_id: str
    run_id: str
    epoch: int
    decision_id: str
    action_index: int
    policy_version: str
    action: str
    layer_name: str | None


class Observer(threading.Thread):
    """Tails experience, dead-letter and commands from the beginning and counts everything on them.

    * archived: per (topic, partition) a bytearray of how often each input offset was archived;
    * types: experience records by ``tamiyo.type`` header; decisions (decoded DecisionRecords);
    * dead letters by their (source_topic, partition, offset), with kind and reason;
    * commands topic offsets (each must be archived too), and each decision id's first command
      (the one hosts handle).
    """

    def __init__(self, settings: Settings, keep_decisions: bool = True) -> None:
        super().__init__(daemon=True, name="chaos-observer")
        self.settings = settings
        self.keep_decisions = keep_decisions
        self.lock = threading.Lock()
        self.archived: dict[tuple[str, int], bytearray] = defaultdict(bytearray)
        self.types: Counter[str] = Counter()
        self.decisions: list[Decision] = []
        self.decision_count = 0
        self.dead: dict[Pos, dict[str, Any]] = {}
        self.dead_letters = 0
        self.commands: dict[int, list[int]] = defaultdict(list)
        self.first_commands: dict[str, dict[str, Any]] = {}
        self.last_progress = time.monotonic()
        self.experience_seen = 0
        self._halt = threading.Event()
        self.error: BaseException | None = None
        self.ready = threading.Event()

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            self.error = exc
            self.ready.set()

    def _run(self) -> None:
        topics = self.settings.topics
        consumer = make_consumer(self.settings, **{"fetch.wait.max.ms": 50, "logger": _QUIET})
        try:
            parts = [TopicPartition(t, p, OFFSET_BEGINNING) for t in (topics.experience, topics.deadletter,
                                                                       topics.commands)
                     for p in partitions_of(consumer, t)]
            consumer.assign(parts)
            self.ready.set()
            while not self._halt.is_set():
                batch = consumer.consume(num_messages=5000, timeout=0.1)
                if not batch:
                    continue
                with self.lock:
                    for message in batch:
                        if message.error() is None:
                            self._count(message)
                    self.last_progress = time.monotonic()
        finally:
            consumer.close()

    def _count(self, message: Any) -> None:
        topics = self.settings.topics
        topic = message.topic()
        if topic == topics.experience:
            self.experience_seen += 1
            kind = header(message, TYPE_HEADER) or "unknown"
            self.types[kind] += 1
            source = header(message, SOURCE_HEADER)
            if source:
                src_topic, partition, offset = source.rsplit("/", 2)
                marks = self.archived[(src_topic, int(partition))]
                offset = int(offset)
                if offset >= len(marks):
                    marks.extend(bytes(offset + 1 - len(marks) + 1024))
                marks[offset] = min(marks[offset] + 1, 255)
            if kind == "DecisionRecord":
                self.decision_count += 1
                if self.keep_decisions:
                    r = decode(message.value()).value
                    self.decisions.append(Decision(time.monotonic(), r["model_id"], r["run_id"], r["epoch"],
                                                   r["decision_id"], r["action_index"], r["policy_version"],
                                                   r["action"], r["layer_name"]))
        elif topic == topics.deadletter:
            self.dead_letters += 1
            letter = decode(message.value()).value
            pos = (letter["source_topic"], letter["partition"], letter["offset"])
            entry = self.dead.setdefault(pos, {"error_kind": letter["error_kind"], "reason": letter["reason"],
                                               "copies": 0, "value_size": letter["value_size"]})
            entry["copies"] += 1
        else:
            self.commands[message.partition()].append(message.offset())
            try:
                decoded = decode(message.value())
            except Exception:  # poison on the commands topic: dead-lettered, never handled by a host
                return
            if decoded.name == "AdaptationCommand":
                self.first_commands.setdefault(decoded.value["decision_id"], decoded.value)

    def start(self) -> None:
        super().start()
        self.ready.wait(30)
        if self.error is not None:
            raise RuntimeError(f"observer failed: {self.error!r}")

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def archived_count(self, pos: Pos) -> int:
        marks = self.archived.get((pos[0], pos[1]))
        return marks[pos[2]] if marks is not None and pos[2] < len(marks) else 0

    def decisions_since(self, t: float) -> list[Decision]:
        with self.lock:
            return [d for d in self.decisions if d.seen_at >= t]

    def first_decision_after(self, t: float, predicate: Callable[[Decision], bool] = lambda d: True) -> float | None:
        with self.lock:
            for d in self.decisions:
                if d.seen_at >= t and predicate(d):
                    return d.seen_at
        return None

    def quiet_for(self) -> float:
        return time.monotonic() - self.last_progress


# --------------------------------------------------------------------------- input topics and the audit


@dataclass
class InputScan:
    """What is on the input topics: every position, plus the statuses of CommandOutcomes."""

    positions: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    applied: Counter[str] = field(default_factory=Counter)  # decision_id -> APPLIED outcomes
    # (model, run, layer, epoch) of every APPLIED GERMINATE whose outcome names it (CommandOutcome v2)
    adaptations: list[tuple[str, str, str, int]] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    epoch_outcomes: dict[Pos, tuple[str, str, int]] = field(default_factory=dict)  # pos -> (model, run, epoch)
    messages: int = 0

    def all_positions(self) -> Iterable[Pos]:
        for (topic, partition), offsets in self.positions.items():
            for offset in offsets:
                yield topic, partition, offset


def scan_inputs(settings: Settings, topics: Iterable[str] | None = None) -> InputScan:
    """Read the input topics from the beginning to their current end."""
    t = settings.topics
    scan = InputScan()
    for topic in topics or (t.topology, t.health, t.outcomes):
        for message in read_topic(settings, topic, idle_timeout=10.0):
            scan.messages += 1
            scan.positions.setdefault((topic, message.partition()), []).append(message.offset())
            if topic != t.outcomes:
                continue
            try:
                decoded = decode(message.value())
            except DecodeError:
                continue
            v = decoded.value
            if decoded.name == "CommandOutcome":
                scan.statuses[v["status"]] += 1
                if v["status"] == "APPLIED":
                    scan.applied[v["decision_id"]] += 1
                    if v.get("action") == "GERMINATE" and v.get("layer_name"):
                        scan.adaptations.append((v["model_id"], v["run_id"], v["layer_name"], v["epoch"]))
            elif decoded.name == "EpochOutcome":
                scan.epoch_outcomes[(topic, message.partition(), message.offset())] = (
                    v["model_id"], v["run_id"], v["epoch"])
    return scan


@dataclass
class Audit:
    valid_inputs: int
    bad_inputs: int
    lost: int
    archived_duplicates: int
    dead_lettered: int
    missing_dead_letters: int
    wrongly_dead_lettered: int
    commands: int
    commands_unarchived: int
    duplicate_applies: int
    applied: int
    outcome_statuses: dict[str, int]
    decisions: int
    distinct_decisions: int
    conflicting_decisions: int
    lost_examples: list[str]
    conflicting_examples: list[str]  # "decision id: action indices" of the first conflicting ones
    conflicting_ids: list[str]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def audit(observer: Observer, settings: Settings, bad: dict[Pos, str] | None = None, timeout: float = 90.0,
          scan: InputScan | None = None) -> tuple[Audit, InputScan]:
    """Wait (up to ``timeout``) until every valid input is archived and every bad one dead-lettered; count.

    Call it after the producers stopped: the input topics are read once, then the observer is
    followed until the worker has caught up or nothing changed for 15 s after the timeout.
    """
    bad = bad or {}
    scan = scan or scan_inputs(settings)

    def missing() -> tuple[list[Pos], list[Pos], int]:
        with observer.lock:
            lost = [p for p in scan.all_positions() if p not in bad and observer.archived_count(p) == 0]
            undead = [p for p in bad if p not in observer.dead]
            commands = sum(1 for part, offsets in observer.commands.items() for o in offsets
                           if observer.archived_count((settings.topics.commands, part, o)) == 0)
        return lost, undead, commands

    deadline = time.monotonic() + timeout
    while True:
        lost, undead, commands_unarchived = missing()
        if not lost and not undead and not commands_unarchived:
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    with observer.lock:
        dups = sum(max(0, observer.archived_count(p) - 1) for p in scan.all_positions())
        wrongly = sum(1 for p in observer.dead if p not in bad)
        by_id: dict[str, set[int]] = defaultdict(set)
        where: dict[str, str] = {}
        for d in observer.decisions:
            by_id[d.decision_id].add(d.action_index)
            where.setdefault(d.decision_id, f"{d.model_id}/{d.run_id}/{d.epoch}")
        commands = sum(len(v) for v in observer.commands.values())
        conflicting = [did for did, actions in by_id.items() if len(actions) > 1]
        dead_ok = sum(1 for p in bad if p in observer.dead)
        decisions = observer.decision_count
    result = Audit(
        valid_inputs=sum(1 for p in scan.all_positions() if p not in bad),
        bad_inputs=len(bad),
        lost=len(lost),
        archived_duplicates=dups,
        dead_lettered=dead_ok,
        missing_dead_letters=len(undead),
        wrongly_dead_lettered=wrongly,
        commands=commands,
        commands_unarchived=commands_unarchived,
        duplicate_applies=sum(n - 1 for n in scan.applied.values() if n > 1),
        applied=sum(scan.applied.values()),
        outcome_statuses=dict(scan.statuses),
        decisions=decisions,
        distinct_decisions=len(by_id),
        conflicting_decisions=len(conflicting),
        lost_examples=[f"{t}/{p}/{o}" for t, p, o in lost[:10]],
        conflicting_examples=[f"{did} ({where[did]}): actions {sorted(by_id[did])}" for did in conflicting[:10]],
        conflicting_ids=conflicting,
    )
    return result, scan


# --------------------------------------------------------------------------- lag and memory


def consumer_lag(settings: Settings) -> int:
    """Messages on the worker's input topics not yet committed by its consumer group."""
    t = settings.topics
    consumer = make_consumer(settings, group_id=f"{settings.topic_prefix}-worker", **{"enable.auto.commit": False})
    try:
        parts = [TopicPartition(topic, p) for topic in (t.topology, t.health, t.outcomes, t.commands)
                 for p in partitions_of(consumer, topic)]
        return sum(watermarks(consumer, tp.topic, tp.partition)[1] - max(tp.offset, 0)
                   for tp in consumer.committed(parts, timeout=10))
    finally:
        consumer.close()


class LagSampler(threading.Thread):
    """Samples the worker group's lag (end offset − committed offset over the input topics) and RSS."""

    def __init__(self, settings: Settings, interval_s: float = 2.0, pids: Callable[[], list[int]] = lambda: []) -> None:
        super().__init__(daemon=True, name="lag-sampler")
        self.settings = settings
        self.interval_s = interval_s
        self.pids = pids
        self.samples: list[dict[str, float]] = []
        self._halt = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        import psutil

        t = self.settings.topics
        group = f"{self.settings.topic_prefix}-worker"
        consumer = make_consumer(self.settings, group_id=group, **{"enable.auto.commit": False, "logger": _QUIET})
        try:
            parts = [TopicPartition(topic, p) for topic in (t.topology, t.health, t.outcomes, t.commands)
                     for p in partitions_of(consumer, topic)]
            while not self._halt.wait(self.interval_s):
                try:
                    committed = consumer.committed(parts, timeout=10)
                    lag = 0
                    for tp in committed:
                        end = watermarks(consumer, tp.topic, tp.partition)[1]
                        lag += end - (tp.offset if tp.offset >= 0 else 0)
                except Exception:  # the broker may be restarting: skip this sample
                    continue
                rss = 0
                for pid in self.pids():
                    try:
                        rss += psutil.Process(pid).memory_info().rss
                    except psutil.Error:
                        pass
                self.samples.append({"t": round(time.monotonic() - self.t0, 2), "lag": lag,
                                     "rss_mb": round(rss / 2**20, 1)})
        finally:
            consumer.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(15)


def trend(points: list[tuple[float, float]]) -> float:
    """Least-squares slope (units per second); 0 for fewer than two points."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


def produce_with_positions(settings: Settings, items: list[tuple[str, bytes | None, bytes, Any]],
                           **overrides: Any) -> list[tuple[Pos, Any]]:
    """Produce (topic, key, value, label) in order; returns [((topic, partition, offset), label)]."""
    producer = make_producer(settings, **({"linger.ms": 5} | overrides))
    delivered: list[tuple[Pos, Any]] = []
    failures: list[str] = []

    def callback(label: Any) -> Callable[[Any, Any], None]:
        def on_delivery(err: KafkaError | None, msg: Any) -> None:
            if err is not None:
                failures.append(str(err))
            else:
                delivered.append(((msg.topic(), msg.partition(), msg.offset()), label))
        return on_delivery

    for topic, key, value, label in items:
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=callback(label))
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(60)
    if left or failures:
        raise RuntimeError(f"{left} records undelivered, {len(failures)} failed: {failures[:3]}")
    return delivered
