"""The Confluent wire format in the codec, without a network: framing, telling the encodings apart,
and the verdicts on ids that cannot be resolved. tests/schemas/test_schema_registry.py does the same
against a real registry."""

from __future__ import annotations

import pytest

from schemas import DecodeError, codec, decode, decode_as, encode, registry
from tests.samples import SAMPLES

ID = 4_242


@pytest.fixture
def confluent_writer() -> codec.ConfluentIds:
    """Writer ids as a registry would hand them out at start-up (ID, ID+1, ... by record name)."""
    ids = codec.ConfluentIds(fetch=None, source="no registry (test)")
    for offset, name in enumerate(registry().names()):
        ids.adopt(ID + offset, registry().current[name], write=True)
    codec.use_confluent(ids)
    return ids


def test_confluent_frame_is_zero_big_endian_id_and_the_same_avro_body(confluent_writer) -> None:
    name = "HealthSignal"
    schema_id = ID + registry().names().index(name)
    data = encode(name, SAMPLES[name])
    assert data[:5] == b"\x00" + schema_id.to_bytes(4, "big")
    codec.use_confluent(None)
    single = encode(name, SAMPLES[name])
    assert single[:2] == codec.MAGIC
    assert data[5:] == single[10:]  # only the header differs


def test_a_reader_decodes_both_encodings_in_one_process(confluent_writer) -> None:
    for name, sample in SAMPLES.items():
        confluent = encode(name, sample)
        assert confluent[0] == 0x00
        codec.use_confluent(None)
        single = encode(name, sample)
        codec.use_confluent(confluent_writer)
        assert decode(confluent) == decode(single) == codec.Decoded(name, sample)


def test_without_a_registry_a_confluent_frame_is_a_bad_header_that_says_why() -> None:
    data = b"\x00" + (17).to_bytes(4, "big") + encode("EpochOutcome", SAMPLES["EpochOutcome"])[10:]
    with pytest.raises(DecodeError) as info:
        decode(data)
    assert info.value.kind == "bad_header"
    assert "schema id 17" in info.value.reason and "TAMIYO_SCHEMA_REGISTRY_URL" in info.value.reason


def test_unknown_and_unresolved_ids_are_rejected_with_their_id(confluent_writer) -> None:
    body = encode("EpochOutcome", SAMPLES["EpochOutcome"])[5:]
    unknown = b"\x00" + (99).to_bytes(4, "big") + body
    with pytest.raises(DecodeError) as info:
        decode_as("EpochOutcome", unknown)
    assert (info.value.kind, "schema id 99" in info.value.reason) == ("unknown_schema_id", True)
    with pytest.raises(DecodeError, match="not resolved"):
        decode(unknown, lookup=False)
    assert codec.unresolved_ids([unknown, encode("EpochOutcome", SAMPLES["EpochOutcome"]), None, b"\x00"]) == set()


def test_short_frames_are_truncated_not_misread() -> None:
    for data in (b"\x00", b"\x00\x00\x00\x01", b"\xc3\x01\x00"):
        with pytest.raises(DecodeError) as info:
            decode(data)
        assert info.value.kind == "truncated"


def test_releases_are_ordered_by_version_number(tmp_path) -> None:
    releases = tmp_path / "releases"
    releases.mkdir()
    for version in (1, 2, 10):
        doc = '"v%d"' % version
        (releases / f"R.v{version}.avsc").write_text(
            '{"type":"record","name":"R","namespace":"t","doc":%s,"fields":[{"name":"a","type":"int"}%s]}'
            % (doc, "".join(f',{{"name":"f{i}","type":"int","default":0}}' for i in range(version))))
    loaded = codec.SchemaRegistry(tmp_path)
    assert [len(s.parsed["fields"]) for s in loaded.releases["R"]] == [2, 3, 11]
    assert loaded.releases["R"][0].full_name == "t.R"
