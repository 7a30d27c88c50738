"""Security: no pickle on any data path, one Kafka security configuration for every client, MLflow
credentials from the environment, a size limit on incoming messages. Unit tests, no broker needed."""

from __future__ import annotations

import asyncio
import io
import os
import textwrap
from pathlib import Path

import pytest
import torch

from models.checkpoint import IncompatiblePolicyError, load_policy, save_policy
from models.policy import PolicyConfig, TamiyoPolicyGNN
from streams.deadletter import dead_letter_value
from streams.intake import RawMessage, Rejected, accept
from streams.kafka.clients import base_config, make_consumer, make_producer
from tamiyo.chaos.security import scan, scan_deserialization, scan_kafka_clients, summary
from tamiyo.config import KafkaSecurity, Settings

CAFILE = __import__("certifi").where()  # a real PEM bundle, so SSL contexts can be built
SECURE = KafkaSecurity(protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="tamiyo",
                       sasl_password="s3cret-pw", ssl_cafile=CAFILE)


def secure_settings(tmp_path: Path) -> Settings:
    return Settings(bootstrap_servers="127.0.0.1:1", data_dir=tmp_path, security=SECURE)


# --------------------------------------------------------------------------- no pickle


def test_package_source_has_no_unsafe_deserialization() -> None:
    findings = scan()
    assert findings["unsafe_deserialization"] == [], "\n".join(findings["unsafe_deserialization"])
    assert summary()["pickle_free"] and summary()["files_scanned"] > 50


def test_the_scanner_catches_what_it_looks_for(tmp_path: Path) -> None:
    bad = tmp_path / "pkg" / "bad.py"
    bad.parent.mkdir()
    bad.write_text(textwrap.dedent("""
        import pickle
        from joblib import load
        import numpy as np, torch, yaml
        torch.load("a")
        torch.load("b", weights_only=False)
        torch.load("c", weights_only=True)
        np.load("d", allow_pickle=True)
        yaml.load("e")
        yaml.load("f", Loader=yaml.SafeLoader)
    """))
    found = {f.what for f in scan_deserialization(bad, tmp_path)}
    assert found == {"imports pickle", "imports from joblib", "torch.load without weights_only=True",
                     "numpy.load with allow_pickle=True", "yaml.load without a safe Loader"}
    assert len(scan_deserialization(bad, tmp_path)) == 6  # both unsafe torch.load calls


class _Payload:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (os.makedirs, (self.path,))


def test_a_checkpoint_carrying_a_pickle_payload_is_refused_and_never_runs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    directory = tmp_path / "policy"
    save_policy(TamiyoPolicyGNN(PolicyConfig(hidden_dim=8)).eval(), directory)
    load_policy(directory)  # the honest checkpoint loads
    marker = tmp_path / "payload-ran"
    state = torch.load(directory / "state_dict.pt", weights_only=True)
    state["payload"] = _Payload(str(marker))
    torch.save(state, directory / "state_dict.pt")
    with pytest.raises(IncompatiblePolicyError):
        load_policy(directory)
    assert not marker.exists()


def test_faust_never_uses_pickle_for_messages_or_tables(tmp_path: Path) -> None:
    from streams.factory import create_app

    app, ctx = create_app(Settings(bootstrap_servers="127.0.0.1:1", data_dir=tmp_path))
    assert (app.conf.key_serializer, app.conf.value_serializer) == ("raw", "raw")
    for table in (ctx.topologies, ctx.gate_state, ctx.graphs.table):  # graphs is a windowed wrapper
        changelog = table.changelog_topic
        serializers = {str(changelog.key_serializer or app.conf.table_key_serializer),
                       str(changelog.value_serializer or app.conf.table_value_serializer)}
        assert not any("pickle" in s for s in serializers), serializers


# --------------------------------------------------------------------------- Kafka security


def test_plaintext_by_default_and_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert KafkaSecurity().confluent() == {"security.protocol": "PLAINTEXT"}
    assert KafkaSecurity().aiokafka() == {"security_protocol": "PLAINTEXT"}
    for key, value in {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                       "KAFKA_SASL_USERNAME": "tamiyo", "KAFKA_SASL_PASSWORD": "s3cret-pw",
                       "KAFKA_SSL_CAFILE": CAFILE}.items():
        monkeypatch.setenv(key, value)
    assert Settings.from_env().security == SECURE
    assert "s3cret-pw" not in repr(Settings.from_env())  # the password is never logged


def test_one_security_config_reaches_confluent_kafka(tmp_path: Path) -> None:
    conf = base_config(secure_settings(tmp_path))
    assert conf["security.protocol"] == "SASL_SSL" and conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert (conf["sasl.username"], conf["sasl.password"], conf["ssl.ca.location"]) == ("tamiyo", "s3cret-pw", CAFILE)
    # librdkafka accepts the configuration (it connects lazily, so no broker is needed).
    producer = make_producer(secure_settings(tmp_path))
    producer.flush(0)
    make_consumer(secure_settings(tmp_path)).close()


def test_one_security_config_reaches_aiokafka_and_faust(tmp_path: Path) -> None:
    from aiokafka import AIOKafkaProducer
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from streams.factory import broker_credentials, create_app

    kwargs = SECURE.aiokafka()
    assert kwargs["security_protocol"] == "SASL_SSL" and kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("tamiyo", "s3cret-pw")

    async def build() -> None:
        producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", **kwargs)
        assert producer.client._security_protocol == "SASL_SSL"
        assert producer.client._sasl_mechanism == "SCRAM-SHA-512"
    asyncio.run(build())

    credentials = broker_credentials(SECURE)
    app, _ = create_app(secure_settings(tmp_path))
    assert app.conf.broker_credentials is not None
    auth = credentials_to_aiokafka_auth(app.conf.broker_credentials)  # what Faust hands to aiokafka
    assert auth["security_protocol"] == "SASL_SSL" and auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("tamiyo", "s3cret-pw")
    assert auth["ssl_context"] is not None
    assert credentials_to_aiokafka_auth(broker_credentials(KafkaSecurity(protocol="SSL", ssl_cafile=CAFILE)))[
        "security_protocol"] == "SSL"
    assert broker_credentials(KafkaSecurity()) is None and credentials is not None


def test_every_kafka_client_in_the_package_takes_the_security_settings(tmp_path: Path) -> None:
    assert scan()["kafka_clients_without_security"] == []
    rogue = tmp_path / "pkg" / "rogue.py"
    rogue.parent.mkdir()
    rogue.write_text("from confluent_kafka import Producer\n\n\ndef f(s):\n"
                     "    return Producer({'bootstrap.servers': s})\n")
    found = [f.what for f in scan_kafka_clients(rogue, tmp_path)]
    assert found == ["Producer built without the KafkaSecurity settings"]


# --------------------------------------------------------------------------- MLflow credentials


def test_mlflow_credentials_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tamiyo never handles MLflow credentials: MLflow reads MLFLOW_TRACKING_USERNAME/PASSWORD (or
    MLFLOW_TRACKING_TOKEN) itself, in every process (workers inherit the environment)."""
    from mlflow.utils.credentials import get_default_host_creds

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "trainer")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "mlflow-pw")
    creds = get_default_host_creds("https://mlflow.example:5000")
    assert (creds.username, creds.password) == ("trainer", "mlflow-pw")
    import training.registry as registry_module

    source = Path(registry_module.__file__).read_text()
    assert "MLFLOW_TRACKING_PASSWORD" not in source and "password" not in source.lower()


# --------------------------------------------------------------------------- message size


def test_oversized_messages_are_rejected_before_decoding_and_truncated_in_the_dead_letter() -> None:
    limit = 1000
    raw = RawMessage("t.health", 0, 7, b"m-1", b"\xc3\x01" + b"\x00" * (limit + 10), 0)
    rejected = accept(raw, frozenset({"HealthSignal"}), limit)
    assert isinstance(rejected, Rejected) and rejected.kind == "oversized"
    from schemas import decode

    letter = decode(dead_letter_value(rejected, value_limit=64)).value
    assert letter["value_size"] == limit + 12 and len(letter["value"]) == 64
    assert (letter["source_topic"], letter["partition"], letter["offset"]) == ("t.health", 0, 7)
    assert io.BytesIO(letter["value"]).read(2) == b"\xc3\x01"
