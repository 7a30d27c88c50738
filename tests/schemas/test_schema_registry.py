"""The schema-registry client and the Confluent wire format against a REAL registry.

The ``schema_registry`` fixture is TAMIYO_SCHEMA_REGISTRY_URL when set, else the embedded Apicurio
Registry 3.0.9 (its Confluent-compatible API, ``/apis/ccompat/v7``, with HTTP basic auth on). It is
not Confluent's own registry (not on Maven Central): Apicurio implements the same REST calls.
"""

from __future__ import annotations

import asyncio
import io
import json
import time

import fastavro
import pytest

from schemas import DecodeError, codec, decode, encode, registry
from schemas.confluent import connect, subject_of
from schemas.registry_client import RegistryClient, RegistryError
from streams.intake import RawMessage, Rejected, accept, resolve_schema_ids
from streams.kafka.clients import use_wire_format
from tamiyo.broker.apache import free_port
from tamiyo.config import SchemaRegistrySettings, Settings
from tests.samples import SAMPLES

NO_SUCH_ID = 2**31 - 3


@pytest.fixture
def client(schema_registry: SchemaRegistrySettings) -> RegistryClient:
    return RegistryClient(schema_registry.url, schema_registry.user_info)


def test_register_is_idempotent_lookup_and_by_id_agree(client: RegistryClient) -> None:
    schema = registry().current["EpochOutcome"]
    first = client.register(subject_of(schema), schema.text)
    assert client.register(subject_of(schema), schema.text) == first
    assert client.lookup(subject_of(schema), schema.text) == first
    assert client.lookup("tamiyo.NotARecord", schema.text) is None
    assert codec.fingerprint_of(json.loads(client.schema_by_id(first))) == schema.fingerprint
    with pytest.raises(RegistryError) as info:
        client.schema_by_id(NO_SUCH_ID)
    assert info.value.status == 404 and info.value.permanent


def test_credentials_are_required_and_never_shown(schema_registry: SchemaRegistrySettings) -> None:
    if not schema_registry.user_info:
        pytest.skip("this registry has no authentication")
    for user_info in ("", "tamiyo:wrong-password"):
        with pytest.raises(RegistryError) as info:
            RegistryClient(schema_registry.url, user_info).subjects()
        assert info.value.status == 401 and info.value.permanent
    password = schema_registry.user_info.split(":", 1)[1]
    assert password not in repr(RegistryClient(schema_registry.url, schema_registry.user_info))
    assert password not in repr(SchemaRegistrySettings(schema_registry.url, schema_registry.user_info))


def test_writer_registers_every_record_under_its_full_name(client: RegistryClient) -> None:
    ids = connect(client, write=True)
    subjects = set(client.subjects())
    for name, schema in registry().current.items():
        assert f"tamiyo.{name}" in subjects
        schema_id = client.lookup(f"tamiyo.{name}", schema.text)
        assert ids.write_headers[name] == b"\x00" + schema_id.to_bytes(4, "big")
        assert ids.schemas[schema_id] is schema


def test_a_reader_with_no_state_decodes_what_a_writer_wrote(client: RegistryClient) -> None:
    codec.use_confluent(connect(client, write=True))
    written = {name: encode(name, sample) for name, sample in SAMPLES.items()}
    reader = connect(client, write=False)  # a fresh process: looks every shipped schema up
    codec.use_confluent(reader)
    assert not reader.write_headers
    for name, data in written.items():
        assert data[0] == 0x00
        assert decode(data, lookup=False).value == SAMPLES[name]
    # An empty cache resolves the same ids one at a time, by id.
    codec.use_confluent(codec.ConfluentIds(reader.fetch, client.url))
    for name, data in written.items():
        assert decode(data).value == SAMPLES[name]


def test_another_version_of_a_record_is_resolved_against_the_current_schema(client: RegistryClient) -> None:
    """A producer with a newer HealthSignal (one more field) registered it: readers decode it by id."""
    current = registry().current["HealthSignal"]
    newer = json.loads(current.text)
    newer["fields"].append({"name": "gpu_temperature", "type": "double", "default": 0.0})
    subject = f"tamiyo.HealthSignal-evolved-{time.time_ns()}"  # not the real subject: its rules stay clean
    newer_id = client.register(subject, json.dumps(newer))
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(newer), SAMPLES["HealthSignal"] | {"gpu_temperature": 71.5})
    codec.use_confluent(connect(client, write=False))
    decoded = decode(b"\x00" + newer_id.to_bytes(4, "big") + body.getvalue())
    assert decoded.name == "HealthSignal" and decoded.value == SAMPLES["HealthSignal"]


def test_a_foreign_record_and_an_unknown_id_are_rejected_once_each(client: RegistryClient) -> None:
    foreign = {"type": "record", "name": "Invoice", "namespace": "shop", "fields": [{"name": "n", "type": "int"}]}
    foreign_id = client.register("shop.Invoice", json.dumps(foreign))
    ids = connect(client, write=False)
    calls = []
    fetch = ids.fetch
    ids.fetch = lambda schema_id: calls.append(schema_id) or fetch(schema_id)
    codec.use_confluent(ids)
    with pytest.raises(DecodeError) as info:
        decode(b"\x00" + foreign_id.to_bytes(4, "big") + b"\x02")
    assert info.value.kind == "unknown_schema" and "shop.Invoice" in info.value.reason
    unknown = b"\x00" + NO_SUCH_ID.to_bytes(4, "big") + encode("EpochOutcome", SAMPLES["EpochOutcome"])[10:]
    for _ in range(3):
        with pytest.raises(DecodeError) as info:
            decode(unknown)
        assert info.value.kind == "unknown_schema_id"
        assert str(NO_SUCH_ID) in info.value.reason and client.url in info.value.reason
    assert calls == [foreign_id, NO_SUCH_ID]  # each bad id was asked once, then remembered


def test_worker_intake_dead_letters_unknown_ids_after_resolving_off_the_loop(schema_registry) -> None:
    settings = Settings(schema_registry=schema_registry)
    use_wire_format(settings, write=True)
    good = encode("EpochOutcome", SAMPLES["EpochOutcome"])
    bad = b"\x00" + NO_SUCH_ID.to_bytes(4, "big") + good[5:]
    messages = [RawMessage("t.outcomes", 0, i, b"m-1", value, 0) for i, value in enumerate((good, bad))]
    codec.use_confluent(codec.ConfluentIds(codec.confluent_ids().fetch, schema_registry.url))  # nothing cached
    asyncio.run(resolve_schema_ids(messages))
    ok, rejected = (accept(m, frozenset({"EpochOutcome"}), 10_000) for m in messages)
    assert not isinstance(ok, Rejected) and ok.record == SAMPLES["EpochOutcome"]
    assert isinstance(rejected, Rejected) and rejected.kind == "unknown_schema_id"
    assert f"schema id {NO_SUCH_ID} is not in the schema registry" in rejected.reason


def test_a_registry_that_does_not_answer_is_a_lookup_failure_after_the_retry_budget() -> None:
    client = RegistryClient(f"http://127.0.0.1:{free_port()}/apis/ccompat/v7", timeout_s=1.0)  # nobody listens
    with pytest.raises(RegistryError) as info:
        connect(client, write=True)  # a writer cannot start without its ids
    assert info.value.status is None and not info.value.permanent
    ids = connect(client, write=False, retry_s=0.6)  # a reader starts, resolving later
    codec.use_confluent(ids)
    data = b"\x00" + (5).to_bytes(4, "big") + encode("EpochOutcome", SAMPLES["EpochOutcome"])[10:]
    started = time.monotonic()
    with pytest.raises(DecodeError) as info:
        decode(data)
    assert info.value.kind == "schema_lookup_failed" and "Connection refused" in info.value.reason
    assert 0.5 <= time.monotonic() - started < 5.0
    assert "attempts" in info.value.reason
    started = time.monotonic()
    with pytest.raises(DecodeError, match="schema_lookup_failed"):
        decode(data)  # remembered: no second wait
    assert time.monotonic() - started < 0.1


def test_settings_read_credentials_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAMIYO_SCHEMA_REGISTRY_URL", "https://registry.example:8081")
    monkeypatch.setenv("TAMIYO_SCHEMA_REGISTRY_USER", "svc")
    monkeypatch.setenv("TAMIYO_SCHEMA_REGISTRY_PASSWORD", "p:w")
    settings = Settings.from_env().schema_registry
    assert (settings.url, settings.user_info) == ("https://registry.example:8081", "svc:p:w")
    monkeypatch.setenv("TAMIYO_SCHEMA_REGISTRY_USER_INFO", "other:secret")
    with pytest.raises(ValueError, match="not both"):
        Settings.from_env()
    monkeypatch.delenv("TAMIYO_SCHEMA_REGISTRY_USER")
    assert Settings.from_env().schema_registry.user_info == "other:secret"
    monkeypatch.setenv("TAMIYO_SCHEMA_REGISTRY_URL", "registry:8081")
    with pytest.raises(ValueError, match="http"):
        Settings.from_env()


@pytest.mark.slow
def test_an_https_registry_is_trusted_only_with_its_ca(tmp_path) -> None:
    """A second embedded Apicurio, HTTPS only, with a certificate made here for 127.0.0.1."""
    import shutil
    import subprocess

    from tamiyo.broker import BrokerUnavailable
    from tamiyo.broker.registry import EmbeddedSchemaRegistry

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    server = EmbeddedSchemaRegistry(tmp_path / "registry", user_info="tls:secret", tls=(cert, key))
    try:
        server.start()
    except BrokerUnavailable as exc:
        pytest.skip(str(exc))
    try:
        assert server.url.startswith("https://127.0.0.1:")
        with pytest.raises(RegistryError) as info:
            RegistryClient(server.url, "tls:secret").subjects()  # the system CAs do not know it
        assert "CERTIFICATE_VERIFY_FAILED" in str(info.value) and info.value.permanent
        settings = Settings(schema_registry=SchemaRegistrySettings(server.url, "tls:secret", ca_file=str(cert)))
        use_wire_format(settings, write=True)
        data = encode("EpochOutcome", SAMPLES["EpochOutcome"])
        assert data[0] == 0x00 and decode(data).value == SAMPLES["EpochOutcome"]
        assert "tamiyo.EpochOutcome" in RegistryClient(server.url, "tls:secret", ca_file=str(cert)).subjects()
    finally:
        server.stop()
