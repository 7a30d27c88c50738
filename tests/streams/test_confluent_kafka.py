"""The Confluent wire format end to end, on a real Kafka and a REAL schema registry.

The registry is TAMIYO_SCHEMA_REGISTRY_URL when set, else the embedded Apicurio Registry (its
Confluent-compatible API, basic auth on); see tests/conftest.py. A simulated fleet writes the
Confluent format, a worker (a real ``tamiyo worker`` process) decodes, decides and archives it and
writes its own outputs in the same format, the fleet decodes and applies the worker's commands,
a message with an unknown schema id is dead-lettered, and the experience replay of a process with
no cached ids decodes everything, single-object messages included.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter

import pytest

from hosts.fleet import FleetStats, run_fleet
from schemas import codec, decode, encode
from schemas.registry_client import RegistryClient
from streams.archive import TYPE_HEADER
from streams.kafka.reader import header, read_topic
from tests.samples import SAMPLES
from tests.streams.kafka_io import TopicCollector, produce
from training.replay import replay

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

NO_SUCH_ID = 2**31 - 5


def _schema_id(value: bytes) -> int:
    assert value[0] == 0x00, f"not the Confluent format: {value[:5].hex()}"
    return int.from_bytes(value[1:5], "big")


def test_fleet_and_worker_speak_the_confluent_format(topics_ready, schema_registry, start_worker) -> None:
    settings = dataclasses.replace(topics_ready, schema_registry=schema_registry)
    topics = settings.topics
    client = RegistryClient(schema_registry.url, schema_registry.user_info)
    worker = start_worker(settings, TAMIYO_EPSILON="1.0", TAMIYO_COOLDOWN_EPOCHS="1")

    # A producer of the old default encoding, and a message whose schema id no registry knows.
    single_object = encode("ModelTopology", SAMPLES["ModelTopology"] | {"model_id": "legacy-0"})
    unknown = b"\x00" + NO_SUCH_ID.to_bytes(4, "big") + single_object[10:]
    produce(topics_ready, topics.topology, [(b"legacy-0", single_object)])
    produce(settings, topics.topology, [(b"legacy-0", unknown)])

    stop = threading.Event()
    result: dict[str, FleetStats] = {}
    fleet = threading.Thread(target=lambda: result.setdefault("stats", run_fleet(
        settings, models=3, duration_s=120, epoch_interval_s=0.3, seed=5, stop_event=stop, epochs_per_run=100)))
    fleet.start()
    outcomes = TopicCollector(settings, topics.outcomes)
    try:
        outcomes.wait_for(lambda ms: any(decode(m.value()).name == "CommandOutcome" for m in ms),
                          timeout=120, alive=worker.alive)
    finally:
        stop.set()
        fleet.join(60)
        outcomes.close()
    assert not fleet.is_alive()
    stats = result["stats"]
    assert stats.commands_applied >= 1 and stats.invalid_commands == 0, stats

    # Everything the fleet wrote is Confluent-framed, with ids the registry maps to Tamiyo subjects.
    produced: Counter = Counter()
    for topic in (topics.topology, topics.health, topics.outcomes, topics.commands):
        for message in read_topic(settings, topic, idle_timeout=2.0):
            if message.key() == b"legacy-0":
                continue
            name = decode(message.value()).name
            produced[name] += 1
            assert f'"name":"{name}"' in client.schema_by_id(_schema_id(message.value()))
    assert produced["HealthBatch"] == stats.health_messages > 0 and produced["AdaptationCommand"] >= 1

    # The worker archives every valid message (original bytes) and writes Confluent-framed decisions.
    def archived() -> tuple[Counter, list]:
        messages = list(read_topic(settings, topics.experience, idle_timeout=2.0))
        return Counter(header(m, TYPE_HEADER) for m in messages), messages

    deadline = time.monotonic() + 90
    kinds, experience = archived()
    while time.monotonic() < deadline and any(kinds[n] < c + (n == "ModelTopology") for n, c in produced.items()):
        time.sleep(1.0)
        kinds, experience = archived()
    assert worker.alive(), worker.log()[-3000:]
    for name, count in produced.items():
        assert kinds[name] >= count, (name, kinds[name], count)
    assert kinds["DecisionRecord"] >= 1
    for message in experience:
        if message.key() == b"legacy-0":
            assert message.value() == single_object
        else:
            _schema_id(message.value())

    # The unknown id went to the dead-letter topic with its reason; nothing else did.
    letters = [decode(m.value()).value for m in read_topic(settings, topics.deadletter, idle_timeout=2.0)]
    assert len(letters) == 1, letters
    assert letters[0]["error_kind"] == "unknown_schema_id" and letters[0]["value"] == unknown
    assert f"schema id {NO_SUCH_ID} is not in the schema registry" in letters[0]["reason"]
    _schema_id(next(iter(read_topic(settings, topics.deadletter, idle_timeout=2.0))).value())

    # Replay in a process state with no cached ids (it looks them up), both encodings decoded.
    codec.use_confluent(None)
    records, window = replay(settings, progress=False)
    assert window.undecodable == 0 and window.records == len(experience)
    replayed = Counter(r.name for r in records)
    assert replayed == kinds
    assert any(r.value["model_id"] == "legacy-0" for r in records if r.name == "ModelTopology")


def test_a_worker_does_not_start_without_its_schema_ids(topics_ready, start_worker) -> None:
    """Producers need registered ids to write at all: an unreachable registry stops the worker at
    start-up with a clear error, before it consumes anything."""
    from tamiyo.broker.apache import free_port

    url = f"http://127.0.0.1:{free_port()}/apis/ccompat/v7"  # nothing listens there
    worker = start_worker(TAMIYO_SCHEMA_REGISTRY_URL=url)
    assert worker.process.wait(120) == 3
    log = worker.log()
    assert "schema registry" in log and "cannot register tamiyo." in log and "Connection refused" in log
