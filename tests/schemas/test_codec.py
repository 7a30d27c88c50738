"""Every .avsc round-trips through fastavro; the single-object header follows the Avro spec."""

from __future__ import annotations

import io
import json
from pathlib import Path

import fastavro
import pytest

from schemas import DecodeError, decode, decode_as, encode, fingerprint_of, registry
from schemas.codec import MAGIC, SCHEMA_DIR, SchemaRegistry
from tests.samples import SAMPLES


def test_every_schema_has_a_sample_and_round_trips() -> None:
    assert set(SAMPLES) == set(registry().names())
    for name, sample in SAMPLES.items():
        decoded = decode(encode(name, sample))
        assert decoded.name == name
        assert decoded.value == sample


def test_header_is_magic_plus_little_endian_crc64_of_canonical_form() -> None:
    # The spec's Rabin fingerprint of "int" is 0x7275d51a3f395c8f; the header stores it little-endian.
    assert fingerprint_of("int") == (0x7275D51A3F395C8F).to_bytes(8, "little")
    data = encode("EpochOutcome", SAMPLES["EpochOutcome"])
    schema = json.loads((SCHEMA_DIR / "EpochOutcome.avsc").read_text())
    assert data[:2] == MAGIC == b"\xc3\x01"
    assert data[2:10] == fingerprint_of(fastavro.parse_schema(schema))


def test_any_avro_library_can_read_the_body_with_the_avsc_alone() -> None:
    data = encode("HealthSignal", SAMPLES["HealthSignal"])
    schema = fastavro.parse_schema(json.loads((SCHEMA_DIR / "HealthSignal.avsc").read_text()))
    assert fastavro.schemaless_reader(io.BytesIO(data[10:]), schema) == SAMPLES["HealthSignal"]


@pytest.mark.parametrize("data,kind", [
    (b"", "truncated"),
    (None, "truncated"),
    (b"\xc3\x01\x00", "truncated"),
    (b"\x00\x00" + b"\x00" * 20, "bad_header"),
    (b"\xc3\x01" + b"\xff" * 8 + b"abc", "unknown_schema"),
])
def test_malformed_input_raises_decode_error_with_kind(data: bytes | None, kind: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode(data)
    assert info.value.kind == kind


def test_truncated_body_and_trailing_bytes_are_rejected() -> None:
    data = encode("HealthSignal", SAMPLES["HealthSignal"])
    with pytest.raises(DecodeError, match="bad_body"):
        decode(data[:-5])
    with pytest.raises(DecodeError, match="trailing"):
        decode(data + b"\x00\x00")


def test_decode_as_checks_the_record_type() -> None:
    data = encode("EpochOutcome", SAMPLES["EpochOutcome"])
    assert decode_as("EpochOutcome", data)["epoch"] == SAMPLES["EpochOutcome"]["epoch"]
    with pytest.raises(DecodeError, match="wrong_type"):
        decode_as("HealthSignal", data)


def test_encode_refuses_wrong_types() -> None:
    bad = dict(SAMPLES["EpochOutcome"], epoch="three")
    with pytest.raises(Exception):
        encode("EpochOutcome", bad)


def test_every_current_schema_is_a_released_version() -> None:
    """Changing a schema means releasing a new version file; old versions must stay readable."""
    released = {fingerprint_of(fastavro.parse_schema(json.loads(p.read_text())))
                for p in (SCHEMA_DIR / "releases").glob("*.avsc")}
    for name in registry().names():
        assert registry().current[name].fingerprint in released, f"{name}.avsc is not in releases/"


def test_old_writer_version_resolves_against_current_reader(tmp_path: Path) -> None:
    """Schema evolution: a current schema that adds an optional field still reads v1 messages."""
    (tmp_path / "releases").mkdir()
    v1 = json.loads((SCHEMA_DIR / "EpochOutcome.avsc").read_text())
    v2 = json.loads(json.dumps(v1))
    v2["fields"].append({"name": "note", "type": ["null", "string"], "default": None})
    (tmp_path / "releases" / "EpochOutcome.v1.avsc").write_text(json.dumps(v1))
    (tmp_path / "releases" / "EpochOutcome.v2.avsc").write_text(json.dumps(v2))
    (tmp_path / "EpochOutcome.avsc").write_text(json.dumps(v2))
    evolved = SchemaRegistry(tmp_path)
    old_bytes = encode("EpochOutcome", SAMPLES["EpochOutcome"])  # written with today's v1
    writer = evolved.by_fingerprint[old_bytes[2:10]]
    reader = evolved.current["EpochOutcome"]
    value = fastavro.schemaless_reader(io.BytesIO(old_bytes[10:]), writer.parsed, reader.parsed)
    assert value["note"] is None and value["epoch"] == SAMPLES["EpochOutcome"]["epoch"]
