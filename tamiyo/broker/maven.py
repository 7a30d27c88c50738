"""Fetch an embedded service from Maven Central into the cache once: a lock, Maven, a marker file.

Shared by the embedded Apache Kafka (its jars) and the embedded schema registry (Apicurio's
application zip). Safe against concurrent callers, other processes included: an ``fcntl`` lock
serialises the fetch, and the marker written after a successful fetch makes later calls no-ops.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

MARKER = ".complete"


class BrokerError(RuntimeError):
    """The broker could not be fetched, formatted or started."""


class BrokerUnavailable(BrokerError):
    """A prerequisite (java, mvn, the Tansu binary) is missing."""


def fetch_once(home: Path, what: str, fetch: Callable[[str], None], missing_hint: str) -> None:
    """Run ``fetch(mvn)`` unless ``home`` already holds a complete fetch; mark it complete after."""
    if (home / MARKER).exists():
        return
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if (home / MARKER).exists():  # another process fetched while we waited
            return
        mvn = shutil.which("mvn")
        if not mvn:
            raise BrokerUnavailable(f"{what} needs Maven (`mvn`) once, to fetch it into {home}; `mvn` is not "
                                    f"on PATH. Install Maven, or {missing_hint}.")
        log.warning("fetching %s from Maven Central into %s (once)", what, home)
        started = time.monotonic()
        fetch(mvn)
        (home / MARKER).write_text(f"{what}\n")
        log.warning("fetched %s in %.1f s", what, time.monotonic() - started)


def run_maven(cmd: list[str], cwd: Path, what: str) -> str:
    """Run a Maven command; its output, or BrokerError with the output's tail."""
    proc = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-40:])
        raise BrokerError(f"Maven could not fetch {what} (exit {proc.returncode}):\n{tail}")
    return proc.stdout
