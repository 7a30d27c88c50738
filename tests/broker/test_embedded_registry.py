"""The embedded schema registry (Apicurio Registry from Maven Central) as ``tamiyo schema-registry`` runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from schemas import registry
from schemas.registry_client import RegistryClient, RegistryError
from tamiyo.broker import BrokerUnavailable, java_executable
from tamiyo.broker.registry import EmbeddedSchemaRegistry

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_cli_prints_the_url_requires_its_credentials_and_stops_on_sigterm(tmp_path: Path) -> None:
    if java_executable() is None:
        pytest.skip("no Java here")
    user_info = f"ops:{uuid.uuid4().hex} with space"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAMIYO_SCHEMA_REGISTRY_")}
    env |= {"TAMIYO_DATA_DIR": str(tmp_path), "TAMIYO_SCHEMA_REGISTRY_USER_INFO": user_info}
    proc = subprocess.Popen([sys.executable, "-m", "tamiyo.cli", "schema-registry"], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line, deadline = "", time.monotonic() + 300
        while not line.startswith("TAMIYO_SCHEMA_REGISTRY_URL=") and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "the registry command exited before printing its URL"
        url = line.strip().split("=", 1)[1]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/apis/ccompat/v7")
        schema = registry().current["DeadLetter"]
        client = RegistryClient(url, user_info)
        schema_id = client.register("tamiyo.DeadLetter", schema.text)
        assert client.subjects() == ["tamiyo.DeadLetter"]
        with pytest.raises(RegistryError) as info:
            RegistryClient(url).schema_by_id(schema_id)
        assert info.value.status == 401
        assert user_info.split(":")[1] not in (tmp_path / "schema-registry" / "registry.log").read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        with pytest.raises(RegistryError) as info:
            client.subjects()
        assert info.value.status is None  # nobody listens any more
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_missing_java_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(BrokerUnavailable, match="java"):
        EmbeddedSchemaRegistry(tmp_path / "r").start(timeout=5)


def test_user_names_that_quarkus_cannot_hold_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="user name"):
        EmbeddedSchemaRegistry(tmp_path, user_info="a=b:secret")
