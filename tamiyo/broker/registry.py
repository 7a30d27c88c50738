"""Embedded schema registry: Apicurio Registry, whose Confluent-compatible API is at ``/apis/ccompat/v7``.

Confluent's own registry is not on Maven Central; Apicurio's application is:
``io.apicurio:apicurio-registry-app:<version>:zip:all`` holds the Quarkus application (a runner jar
and ``lib/``). Maven fetches it once into ``$TAMIYO_CACHE_DIR/apicurio-registry-<version>`` (with
``dependency:get -Dtransitive=false``: the artifact's parent POM is not served, so no goal that
reads its descriptor works), and it runs on Java 17 on 127.0.0.1 with its default in-memory H2
storage — everything registered is lost when it stops. Given ``user_info`` it requires HTTP basic
auth for one user (Quarkus embedded users), and given ``tls`` (PEM certificate and key files) it
serves HTTPS only, like a secured registry.
"""

from __future__ import annotations

import base64
import contextlib
import os
import logging
import re
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tamiyo.broker.apache import _LIVE, BrokerProcess, _require_java, _tail, cache_dir, free_port
from tamiyo.broker.maven import BrokerError, fetch_once, run_maven

log = logging.getLogger(__name__)

APICURIO_VERSION = "3.0.9"
CCOMPAT_PATH = "/apis/ccompat/v7"
MAVEN_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:2.8"
JVM_OPTS = ["-Xms64m", "-Xmx384m", "-XX:+UseSerialGC", "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true"]
_USER = re.compile(r"^[A-Za-z0-9_.-]+$")


def apicurio_version() -> str:
    return os.environ.get("TAMIYO_APICURIO_VERSION") or APICURIO_VERSION


def fetch_registry_app(version: str | None = None) -> Path:
    """The folder holding Apicurio's runner jar and ``lib/``, fetched and unpacked once."""
    version = version or apicurio_version()
    home = cache_dir() / f"apicurio-registry-{version}"
    app = home / "app"

    def fetch(mvn: str) -> None:
        _require_java()
        repo = home / "m2"  # a private local repository, deleted once the zip is unpacked
        artifact = f"io.apicurio:apicurio-registry-app:{version}:zip:all"
        run_maven([mvn, "-B", "-q", "--no-transfer-progress", f"-Dmaven.repo.local={repo}",
                   f"{MAVEN_PLUGIN}:get", f"-Dartifact={artifact}", "-Dtransitive=false"], home, artifact)
        archive = repo / "io/apicurio/apicurio-registry-app" / version / f"apicurio-registry-app-{version}-all.zip"
        if app.exists():
            shutil.rmtree(app)  # a previous attempt died half way
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(app)
        if not runner_jar(app):
            raise BrokerError(f"{archive} holds no *-runner.jar")
        shutil.rmtree(repo)

    fetch_once(home, f"the embedded schema registry (Apicurio Registry {version}, ~110 MB)", fetch,
               "point TAMIYO_SCHEMA_REGISTRY_URL at a running registry")
    return app


def runner_jar(app: Path) -> Path | None:
    return next(iter(sorted(app.glob("*-runner.jar"))), None)


class EmbeddedSchemaRegistry(BrokerProcess):
    """One Apicurio Registry on 127.0.0.1 as a child JVM; ``url`` is its Confluent-compatible API."""

    kind = "schema-registry"
    log_name = "registry.log"
    STOP_TIMEOUT = 20.0
    START_TIMEOUT = 120.0

    def __init__(self, data_dir: Path, port: int = 0, user_info: str = "", version: str | None = None,
                 tls: tuple[Path, Path] | None = None) -> None:
        if user_info and not _USER.match(user_info.split(":", 1)[0]):
            raise ValueError("the embedded registry's user name may hold letters, digits, '_', '.' and '-' only")
        self.data_dir = Path(data_dir).resolve()
        self.log_dir = self.data_dir
        self.port = port
        self.user_info = user_info
        self.tls = tls
        self.version = version or apicurio_version()
        self._proc: subprocess.Popen | None = None
        self._log_handle = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.bootstrap}{CCOMPAT_PATH}"

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"EmbeddedSchemaRegistry({self.data_dir}, port={self.port}, {state})"

    def start(self, timeout: float = START_TIMEOUT) -> str:
        """Start it (fetching the application when needed); returns ``url``."""
        if self.running:
            return self.url
        deadline = time.monotonic() + timeout
        java = _require_java()
        app = fetch_registry_app(self.version)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        auto_port = self.port == 0
        for attempt in range(3):
            self.port = self.port or free_port()
            self._write_config()
            self._spawn(java, app)
            try:
                self._wait_ready(deadline)
            except BrokerError:
                self.kill()
                if auto_port and attempt < 2 and "Address already in use" in _tail(self.log_file, 200):
                    self.port = 0
                    continue
                raise
            _LIVE.add(self)
            log.info("Apicurio Registry %s ready at %s (pid %s)", self.version, self.url, self.pid)
            return self.url
        raise AssertionError("unreachable")

    def properties(self) -> dict[str, str]:
        """Quarkus configuration, read from ``config/application.properties`` in the working folder
        (so that the password never shows on a command line)."""
        props = {"quarkus.http.host": "127.0.0.1", "quarkus.log.console.color": "false"}
        if self.tls:  # HTTPS only: with insecure requests disabled no plain-HTTP port is opened
            cert, key = self.tls
            props |= {"quarkus.http.ssl-port": str(self.port), "quarkus.http.insecure-requests": "disabled",
                      "quarkus.http.ssl.certificate.files": str(Path(cert).resolve()),
                      "quarkus.http.ssl.certificate.key-files": str(Path(key).resolve())}
        else:
            props["quarkus.http.port"] = str(self.port)
        if self.user_info:
            user, password = self.user_info.split(":", 1)
            props |= {
                "quarkus.http.auth.basic": "true",
                "quarkus.security.users.embedded.enabled": "true",
                "quarkus.security.users.embedded.plain-text": "true",
                f"quarkus.security.users.embedded.users.{user}": password,
                "quarkus.http.auth.permission.registry.paths": "/apis/*",
                "quarkus.http.auth.permission.registry.policy": "authenticated",
            }
        return props

    def _write_config(self) -> None:
        config = self.data_dir / "config"
        config.mkdir(exist_ok=True)
        text = "".join(f"{k}={_escape(v)}\n" for k, v in self.properties().items())
        path = config / "application.properties"
        path.write_text("# written by tamiyo.broker.registry.EmbeddedSchemaRegistry\n" + text)
        path.chmod(0o600)

    def _spawn(self, java: str, app: Path) -> None:
        self._close_log()
        self._log_handle = open(self.log_file, "ab")
        self._log_handle.write(f"\n===== tamiyo: starting Apicurio Registry {time.ctime()} =====\n".encode())
        self._log_handle.flush()
        self._proc = subprocess.Popen([java, *JVM_OPTS, "-jar", str(runner_jar(app))], stdin=subprocess.DEVNULL,
                                      stdout=self._log_handle, stderr=subprocess.STDOUT, cwd=self.data_dir,
                                      start_new_session=True)

    def _wait_ready(self, deadline: float) -> None:
        request = urllib.request.Request(f"{self.url}/subjects")
        if self.user_info:
            request.add_header("Authorization", "Basic " + base64.b64encode(self.user_info.encode()).decode())
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise BrokerError(f"schema registry exited with code {self._proc.returncode} while starting; "
                                  f"log tail:\n{_tail(self.log_file)}")
            context = ssl.create_default_context(cafile=str(self.tls[0])) if self.tls else None
            with contextlib.suppress(urllib.error.URLError, OSError):
                with urllib.request.urlopen(request, timeout=2, context=context) as response:
                    if response.status == 200:
                        return
            if time.monotonic() > deadline:
                raise BrokerError(f"schema registry not ready at {self.url} in time; log tail:\n{_tail(self.log_file)}")
            time.sleep(0.2)


def _escape(value: str) -> str:
    """A value as Java .properties text: backslashes, line breaks and a leading space survive."""
    text = value.replace("\\", "\\\\").replace("\n", "\\n")
    return "\\" + text if text.startswith(" ") else text
