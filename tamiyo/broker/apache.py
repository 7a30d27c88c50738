"""Embedded Apache Kafka: the official broker jars from Maven Central, run as one KRaft node.

No Docker and no download of the binary distribution: Maven resolves ``org.apache.kafka:kafka_2.13`` and its
runtime dependencies (what the distribution's ``libs/`` holds) into a cache folder once, then every broker is
``java -cp 'libs/*' kafka.Kafka server.properties`` with a combined broker+controller on 127.0.0.1.

Cache: ``$TAMIYO_CACHE_DIR`` or ``~/.cache/tamiyo``, subfolder ``kafka-<version>/libs``. The Kafka version is
``$TAMIYO_KAFKA_VERSION`` or :data:`KAFKA_VERSION`.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
import weakref
from pathlib import Path
from typing import Any

from tamiyo.broker.maven import MARKER, BrokerError, BrokerUnavailable, fetch_once, run_maven

log = logging.getLogger(__name__)

KAFKA_VERSION = "3.9.2"
POM = Path(__file__).with_name("pom.xml")
DEFAULT_MESSAGE_MAX_BYTES = 2 * 1024 * 1024
JVM_OPTS = [
    "-Xms256m",
    "-Xmx512m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
]


# --------------------------------------------------------------------------- jars


def kafka_version() -> str:
    return os.environ.get("TAMIYO_KAFKA_VERSION") or KAFKA_VERSION


def cache_dir() -> Path:
    return Path(os.environ.get("TAMIYO_CACHE_DIR") or Path.home() / ".cache" / "tamiyo").expanduser()


def libs_dir(version: str | None = None) -> Path:
    return cache_dir() / f"kafka-{version or kafka_version()}" / "libs"


def libs_cached(version: str | None = None) -> bool:
    return (libs_dir(version).parent / MARKER).exists()


def java_executable() -> str | None:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and os.access(Path(java_home) / "bin" / "java", os.X_OK):
        return str(Path(java_home) / "bin" / "java")
    return shutil.which("java")


def _require_java() -> str:
    java = java_executable()
    if not java:
        raise BrokerUnavailable(
            "the embedded Apache Kafka broker needs a Java 17+ runtime: `java` is not on PATH (nor in $JAVA_HOME). "
            "Install a JDK, or use TAMIYO_BROKER=tansu, or point KAFKA_BOOTSTRAP_SERVERS at a running broker."
        )
    return java


def fetch_kafka_libs(version: str | None = None, quiet: bool | None = None) -> Path:
    """Resolve the Kafka broker jars with Maven into the cache once; returns the ``libs`` folder."""
    version = version or kafka_version()
    libs = libs_dir(version)
    home = libs.parent

    def fetch(mvn: str) -> None:
        _require_java()
        # Run Maven on a copy of the pom inside the cache: nothing is written next to the installed package.
        pom = home / "pom.xml"
        shutil.copyfile(POM, pom)
        if libs.exists():
            shutil.rmtree(libs)  # a previous attempt died half way
        cmd = [mvn, "-B", "--no-transfer-progress", "-f", str(pom), f"-Dkafka.version={version}"]
        cmd += ["-q"] if (not log.isEnabledFor(logging.DEBUG) if quiet is None else quiet) else []
        cmd += ["dependency:copy-dependencies", f"-DoutputDirectory={libs}"]
        output = run_maven(cmd, home, f"Apache Kafka {version}")
        if not any(libs.glob(f"kafka_2.13-{version}.jar")):
            raise BrokerError(f"Maven did not fetch kafka_2.13-{version}.jar into {libs}:\n{output[-4000:]}")

    fetch_once(home, f"the embedded Apache Kafka broker ({version} jars, ~50 MB)", fetch,
               "use TAMIYO_BROKER=tansu, or point KAFKA_BOOTSTRAP_SERVERS at a running broker")
    return libs


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_cluster_id() -> str:
    """A Kafka ``Uuid`` string (URL-safe base64 of 16 bytes, no padding), like ``kafka-storage random-uuid``.

    Never one starting with "-" (as Kafka's own ``Uuid.randomUuid``): the storage tool would read it as an option.
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _quiet_logger() -> logging.Logger:
    """librdkafka logs every refused connection while a broker starts; send that to DEBUG."""
    return logging.getLogger("tamiyo.broker.probe")


def wait_for_kafka(bootstrap: str, proc: subprocess.Popen | None, deadline: float, log_file: Path | None) -> None:
    """Block until a metadata request lists at least one broker; raise with the log tail on failure or exit."""
    from confluent_kafka.admin import AdminClient

    host, port = bootstrap.rsplit(":", 1)
    # Cheap TCP probe first, so the admin client is not created against a closed port over and over.
    while True:
        if proc is not None and proc.poll() is not None:
            raise BrokerError(f"broker exited with code {proc.returncode} while starting; log tail:\n{_tail(log_file)}")
        with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=0.5):
            break
        if time.monotonic() > deadline:
            raise BrokerError(f"broker did not open {bootstrap} in time; log tail:\n{_tail(log_file)}")
        time.sleep(0.1)
    admin = AdminClient({"bootstrap.servers": bootstrap, "logger": _quiet_logger(), "socket.timeout.ms": 2000})
    last: Exception | None = None
    while True:
        if proc is not None and proc.poll() is not None:
            raise BrokerError(f"broker exited with code {proc.returncode} while starting; log tail:\n{_tail(log_file)}")
        try:
            md = admin.list_topics(timeout=2)
            if md.brokers:
                return
        except Exception as exc:  # KafkaException while the broker is not ready yet
            last = exc
        if time.monotonic() > deadline:
            raise BrokerError(f"broker at {bootstrap} not ready in time ({last}); log tail:\n{_tail(log_file)}")
        time.sleep(0.2)


_LIVE: "weakref.WeakSet[Any]" = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    """Never leave a broker JVM behind when the interpreter exits without stop()."""
    for broker in list(_LIVE):
        with contextlib.suppress(Exception):
            broker.stop(timeout=10)


def _stop_process(proc: subprocess.Popen, timeout: float) -> int:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("broker pid %s ignored SIGTERM for %.0f s; killing it", proc.pid, timeout)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def _kill_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


# --------------------------------------------------------------------------- broker

LOG4J = """\
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=INFO
log4j.logger.kafka.request.logger=WARN
log4j.logger.kafka.log.LogCleaner=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.org.apache.kafka.storage.internals.log=WARN
log4j.logger.kafka.log=WARN
"""


class BrokerProcess:
    """What every embedded broker shares: a child process on 127.0.0.1 with a log file.

    Subclasses set ``kind``, ``STOP_TIMEOUT``, ``START_TIMEOUT`` and ``log_name`` and implement
    ``start(timeout)``.
    """

    kind = ""
    log_name = "broker.log"
    STOP_TIMEOUT = 30.0
    START_TIMEOUT = 90.0

    port: int
    log_dir: Path
    _proc: subprocess.Popen | None
    _log_handle: Any

    def start(self, timeout: float | None = None) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def bootstrap(self) -> str:
        if not self.port:
            raise BrokerError("the broker has not been started yet (no port chosen)")
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_file(self) -> Path:
        return self.log_dir / self.log_name

    def stop(self, timeout: float | None = None) -> int | None:
        """Graceful shutdown (SIGTERM to the process group), SIGKILL after ``timeout`` seconds."""
        code = None
        if self._proc is not None:
            code = _stop_process(self._proc, self.STOP_TIMEOUT if timeout is None else timeout)
        self._cleanup()
        return code

    def kill(self) -> None:
        """SIGKILL, no shutdown."""
        if self._proc is not None:
            _kill_process(self._proc)
        self._cleanup()

    def restart(self, timeout: float | None = None, hard: bool = False) -> str:
        """Stop (or kill, ``hard=True``) and start again on the same ports (and data, where kept)."""
        self.kill() if hard else self.stop()
        return self.start(self.START_TIMEOUT if timeout is None else timeout)

    def __enter__(self) -> "BrokerProcess":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _close_log(self) -> None:
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def _cleanup(self) -> None:
        self._close_log()
        _LIVE.discard(self)


class EmbeddedKafka(BrokerProcess):
    """One Apache Kafka KRaft node (broker + controller) on 127.0.0.1, as a child JVM.

    ``data_dir`` holds ``server.properties``, the log4j config, the KRaft storage (``kraft-logs/``) and, unless
    ``log_dir`` says otherwise, the broker's stdout/stderr (``broker.log``). Port 0 picks a free port on the first
    start; restarts keep the same ports and data, so committed records and offsets survive ``stop``/``kill``.
    """

    kind = "kafka"
    log_name = "broker.log"
    STOP_TIMEOUT = 30.0
    START_TIMEOUT = 90.0

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        log_dir: Path | None = None,
        *,
        message_max_bytes: int = DEFAULT_MESSAGE_MAX_BYTES,
        extra_config: dict[str, Any] | None = None,
        version: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.log_dir = Path(log_dir).resolve() if log_dir else self.data_dir
        self.port = port
        self.controller_port = 0
        self.message_max_bytes = message_max_bytes
        self.extra_config = dict(extra_config or {})
        self.version = version or kafka_version()
        self._proc: subprocess.Popen | None = None
        self._log_handle = None

    # ---- public API

    @property
    def storage_dir(self) -> Path:
        return self.data_dir / "kraft-logs"

    def start(self, timeout: float = 90) -> str:
        """Start the node (fetching the jars and formatting storage when needed); returns the bootstrap string."""
        if self.running:
            return self.bootstrap
        deadline = time.monotonic() + timeout
        java = _require_java()
        libs = fetch_kafka_libs(self.version)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        auto_port = self.port == 0
        for attempt in range(3):
            if not self.port:
                self.port = free_port()
            if not self.controller_port:
                self.controller_port = free_port()
            props = self._write_config()
            self._format(java, libs, props)
            t0 = time.monotonic()
            self._spawn(java, libs, props)
            try:
                wait_for_kafka(self.bootstrap, self._proc, deadline, self.log_file)
            except BrokerError:
                self.kill()
                if auto_port and attempt < 2 and "Address already in use" in _tail(self.log_file, 200):
                    log.info("port race on %s/%s, retrying with new ports", self.port, self.controller_port)
                    self.port = self.controller_port = 0
                    continue
                raise
            _LIVE.add(self)
            log.info("Apache Kafka %s ready on %s in %.1f s (pid %s)", self.version, self.bootstrap,
                     time.monotonic() - t0, self.pid)
            return self.bootstrap
        raise AssertionError("unreachable")

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"EmbeddedKafka({self.data_dir}, port={self.port}, {state})"

    # ---- internals

    def server_properties(self) -> dict[str, Any]:
        p, cp = self.port, self.controller_port
        props: dict[str, Any] = {
            "process.roles": "broker,controller",
            "node.id": 1,
            "controller.quorum.voters": f"1@127.0.0.1:{cp}",
            "listeners": f"PLAINTEXT://127.0.0.1:{p},CONTROLLER://127.0.0.1:{cp}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{p}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.storage_dir),
            "num.partitions": 4,
            "default.replication.factor": 1,
            "min.insync.replicas": 1,
            "offsets.topic.replication.factor": 1,
            "offsets.topic.num.partitions": 10,
            "transaction.state.log.replication.factor": 1,
            "transaction.state.log.min.isr": 1,
            "transaction.state.log.num.partitions": 10,
            "group.initial.rebalance.delay.ms": 0,
            "auto.create.topics.enable": "true",
            "message.max.bytes": self.message_max_bytes,
            "replica.fetch.max.bytes": max(self.message_max_bytes, 1_048_576),
            "num.network.threads": 2,
            "num.io.threads": 4,
            "num.recovery.threads.per.data.dir": 2,
            "log.cleaner.threads": 1,
            "log.cleaner.dedupe.buffer.size": 16 * 1024 * 1024,
            "log.retention.check.interval.ms": 60_000,
            "delete.topic.enable": "true",
            # After a SIGKILL the restarted node must wait out its previous incarnation's session before it may
            # register again (DUPLICATE_BROKER_REGISTRATION): 9 s by default, ~4 s with these.
            "broker.session.timeout.ms": 4000,
            "broker.heartbeat.interval.ms": 500,
        }
        props.update(self.extra_config)
        return props

    def _write_config(self) -> Path:
        path = self.data_dir / "server.properties"
        text = "".join(f"{k}={v}\n" for k, v in self.server_properties().items())
        path.write_text("# written by tamiyo.broker.apache.EmbeddedKafka\n" + text)
        (self.data_dir / "log4j.properties").write_text(LOG4J)
        return path

    def _jvm(self, java: str, libs: Path) -> list[str]:
        return [java, *JVM_OPTS, f"-Dlog4j.configuration=file:{self.data_dir / 'log4j.properties'}",
                "-cp", f"{libs}/*"]

    def _format(self, java: str, libs: Path, props: Path) -> None:
        if (self.storage_dir / "meta.properties").exists():
            return
        cluster_id = random_cluster_id()
        cmd = [*self._jvm(java, libs), "kafka.tools.StorageTool", "format", "--ignore-formatted",
               "-t", cluster_id, "-c", str(props)]
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=120)
        if proc.returncode != 0 or not (self.storage_dir / "meta.properties").exists():
            raise BrokerError(f"formatting KRaft storage in {self.storage_dir} failed (exit {proc.returncode}):\n"
                              + "\n".join(proc.stdout.splitlines()[-30:]))
        log.debug("formatted %s with cluster id %s", self.storage_dir, cluster_id)

    def _spawn(self, java: str, libs: Path, props: Path) -> None:
        self._close_log()
        self._log_handle = open(self.log_file, "ab")
        self._log_handle.write(f"\n===== tamiyo: starting kafka.Kafka {time.ctime()} =====\n".encode())
        self._log_handle.flush()
        self._proc = subprocess.Popen(
            [*self._jvm(java, libs), "kafka.Kafka", str(props)],
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir,
            start_new_session=True,  # own process group: Ctrl-C in a terminal does not reach the JVM directly
        )

