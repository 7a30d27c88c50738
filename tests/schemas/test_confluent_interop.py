"""Tamiyo's Confluent framing against Confluent's own Python serializers (confluent-kafka's
``schema_registry`` extra, a dev dependency), both ways, on the real registry of the
``schema_registry`` fixture (the embedded Apicurio Registry unless TAMIYO_SCHEMA_REGISTRY_URL is set)."""

from __future__ import annotations

import confluent_kafka.schema_registry as sr
import confluent_kafka.schema_registry.avro as avro
import pytest
from confluent_kafka.serialization import MessageField, SerializationContext

from schemas import codec, decode, encode, registry
from schemas.confluent import connect
from schemas.registry_client import RegistryClient
from tests.samples import SAMPLES


@pytest.fixture
def confluent_client(schema_registry):  # type: ignore[no-untyped-def]
    conf = {"url": schema_registry.url}
    if schema_registry.user_info:
        conf["basic.auth.user.info"] = schema_registry.user_info
    return sr.SchemaRegistryClient(conf)


def test_confluents_deserializer_reads_what_tamiyo_writes(schema_registry, confluent_client) -> None:
    codec.use_confluent(connect(RegistryClient(schema_registry.url, schema_registry.user_info), write=True))
    deserialize = avro.AvroDeserializer(confluent_client)
    for name, sample in SAMPLES.items():
        data = encode(name, sample)
        assert data[0] == 0x00
        assert deserialize(data, SerializationContext("tamiyo.any", MessageField.VALUE)) == sample


def test_tamiyo_reads_what_confluents_serializer_writes_under_record_name_subjects(
        schema_registry, confluent_client) -> None:
    schema = registry().current["EpochOutcome"]
    serialize = avro.AvroSerializer(confluent_client, schema.text,
                                    conf={"subject.name.strategy": sr.record_subject_name_strategy})
    data = serialize(SAMPLES["EpochOutcome"], SerializationContext("tamiyo.outcomes", MessageField.VALUE))
    assert data[0] == 0x00
    codec.use_confluent(connect(RegistryClient(schema_registry.url, schema_registry.user_info), write=False))
    assert decode(data) == codec.Decoded("EpochOutcome", SAMPLES["EpochOutcome"])
    registered = confluent_client.get_latest_version("tamiyo.EpochOutcome")
    assert registered.schema_id == int.from_bytes(data[1:5], "big")
