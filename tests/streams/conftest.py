"""A real worker process (``tamiyo worker``) on the session broker, per test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from tamiyo.config import Settings
from tests.streams.kafka_io import close_open_collectors


@pytest.fixture(autouse=True)
def _close_collectors() -> Iterator[None]:
    yield
    close_open_collectors()


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAMIYO_SCHEMA_REGISTRY_")}
    return env | dict(
        KAFKA_BOOTSTRAP_SERVERS=settings.bootstrap_servers,
        TAMIYO_TOPIC_PREFIX=settings.topic_prefix,
        TAMIYO_DATA_DIR=str(settings.data_dir),
        TAMIYO_PARTITIONS=str(settings.partitions),
        TAMIYO_LOG_LEVEL="info",
        # A stalled table recovery (a Faust hang seen once in CI) logs its state and rejoins well
        # within a test's timeouts.
        TAMIYO_RECOVERY_STALL_SECONDS="20",
    ) | registry_env(settings) | extra


def registry_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process ``settings.schema_registry`` (empty: none)."""
    registry = settings.schema_registry
    if not registry.url:
        return {}
    return {"TAMIYO_SCHEMA_REGISTRY_URL": registry.url, "TAMIYO_SCHEMA_REGISTRY_USER_INFO": registry.user_info,
            "TAMIYO_SCHEMA_REGISTRY_RETRY_SECONDS": str(registry.retry_s)}


class WorkerProcess:
    def __init__(self, settings: Settings, log_path: Path, module: str = "tamiyo.cli", **env: str) -> None:
        """``module``: what ``python -m`` runs with the argument ``worker`` (the CLI, or a wrapper of it)."""
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.process = subprocess.Popen([sys.executable, "-m", module, "worker"],
                                        env=worker_env(settings, **env), stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until Faust logs "Worker: Ready" (torch and PyG imports take a while on a cold machine)."""
        deadline = time.monotonic() + timeout
        while "[^Worker]: Ready" not in self.log():
            assert self.alive(), f"the worker exited with code {self.process.returncode}:\n{self.log()[-3000:]}"
            assert time.monotonic() < deadline, f"the worker was not ready after {timeout:.0f} s"
            time.sleep(0.2)


@pytest.fixture
def start_worker(topics_ready: Settings, tmp_path: Path) -> Iterator:
    workers: list[WorkerProcess] = []

    def start(settings: Settings | None = None, module: str = "tamiyo.cli", **env: str) -> WorkerProcess:
        worker = WorkerProcess(settings or topics_ready, tmp_path / f"worker-{len(workers)}.log", module, **env)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()
    # Printed at teardown, so pytest shows it only when the test failed: what each worker did.
    for worker in workers:
        print(f"--- {worker.log_path.name} (exit {worker.process.returncode}), last lines ---")
        print(log_digest(worker.log()))


def log_digest(text: str, lines: int = 60) -> str:
    """A worker log without Faust's boxed tables and its shutdown chatter: the last ``lines`` lines."""
    kept = [line for line in text.splitlines()
            if line.strip() and line.lstrip()[:1] not in "+|│┌└├╒╘〃" and "Stopping..." not in line]
    return "\n".join(kept[-lines:])
