"""A real worker on a real broker does not command a seed twice before its host applied it, and a
REJECTED answer frees the seed."""

from __future__ import annotations

import pytest

from schemas import decode
from streams.archive import TYPE_HEADER
from streams.kafka.reader import header
from tests.samples import SAMPLES
from tests.streams.kafka_io import TopicCollector, produce_records
from tests.streams.test_worker_kafka import decisions_in, outcome, signals, topology

pytestmark = pytest.mark.kafka


def first_epoch(settings, start_worker, models: list[str], cooldown: int):  # type: ignore[no-untyped-def]
    """A worker (no exploration), a collector of the experience topic, and epoch 1 of ``models``
    decided: the heuristic adapts the sick layer (layers.2) with its first dormant seed."""
    topics = settings.topics
    worker = start_worker(TAMIYO_EPSILON="0.0", TAMIYO_COOLDOWN_EPOCHS=str(cooldown), TAMIYO_SIGNAL_WAIT_SECONDS="15")
    experience = TopicCollector(settings, topics.experience)
    produce_records(settings, topics.topology, "ModelTopology", [topology(m) for m in models])
    for m in models:
        produce_records(settings, topics.health, "HealthSignal", signals(m, epoch=1))
    produce_records(settings, topics.outcomes, "EpochOutcome", [outcome(m, 1) for m in models])
    experience.wait_for(lambda ms: len(decisions_in(ms)) >= len(models), timeout=90, alive=worker.alive)
    first = {d["model_id"]: d for d in decisions_in(experience.messages)}
    for d in first.values():
        assert (d["action"], d["layer_name"], d["seed_index"]) == ("GERMINATE", "layers.2", 0), d
    return worker, experience, first


def test_a_seed_waits_for_telemetry_or_a_rejection_before_it_is_commanded_again(topics_ready, start_worker) -> None:
    settings = topics_ready
    topics = settings.topics
    models = ["m-late", "m-rejected"]
    worker, experience, first = first_epoch(settings, start_worker, models, cooldown=1)

    # One host rejects its command; the other has not applied its command yet.
    rejected = dict(SAMPLES["CommandOutcome"], decision_id=first["m-rejected"]["decision_id"], model_id="m-rejected",
                    run_id="run-1", epoch=1, status="REJECTED", reason="test", parameter_delta=0)
    produce_records(settings, topics.outcomes, "CommandOutcome", [rejected])
    experience.wait_for(lambda ms: any(header(m, TYPE_HEADER) == "CommandOutcome" for m in ms), timeout=60,
                        alive=worker.alive)

    # Epoch 2: both hosts' telemetry still shows both seeds DORMANT, and the cooldown is over.
    for m in models:
        produce_records(settings, topics.health, "HealthSignal", signals(m, epoch=2))
    produce_records(settings, topics.outcomes, "EpochOutcome", [outcome(m, 2) for m in models])
    experience.wait_for(lambda ms: len(decisions_in(ms)) >= 4, timeout=90, alive=worker.alive)
    second = {d["model_id"]: d for d in decisions_in(experience.messages) if d["epoch"] == 2}
    # Seed 0 of the late host is still on its way: the next free seed. The rejected one is free again.
    assert (second["m-late"]["layer_name"], second["m-late"]["seed_index"]) == ("layers.2", 1), second["m-late"]
    assert (second["m-rejected"]["layer_name"], second["m-rejected"]["seed_index"]) == ("layers.2", 0)
    outcomes = [decode(m.value()).value for m in experience.messages if header(m, TYPE_HEADER) == "CommandOutcome"]
    assert [o["status"] for o in outcomes] == ["REJECTED"]
    assert worker.alive()
    experience.close()


def test_the_gate_follows_the_command_a_host_says_it_handled(topics_ready, start_worker) -> None:
    """A v2 DUPLICATE naming another command of the id (what a host answers a differing re-decision
    after a worker crash) puts that command's layer under cooldown: the next epoch does not adapt it."""
    settings = topics_ready
    topics = settings.topics
    models = ["m-control", "m-redecided"]
    worker, experience, first = first_epoch(settings, start_worker, models, cooldown=3)

    duplicate = dict(SAMPLES["CommandOutcome"], decision_id=first["m-redecided"]["decision_id"], model_id="m-redecided",
                     run_id="run-1", epoch=1, status="DUPLICATE", reason="decision already handled",
                     parameter_delta=0, action="GERMINATE", layer_name="layers.1", seed_index=0, kernel="mlp_small")
    produce_records(settings, topics.outcomes, "CommandOutcome", [duplicate])
    experience.wait_for(lambda ms: any(header(m, TYPE_HEADER) == "CommandOutcome" for m in ms), timeout=60,
                        alive=worker.alive)

    # Epoch 2: layers.1 is now the sick one (three reports: its window mean falls below the heuristic's
    # threshold). Without the host's word both models would adapt it.
    for m in models:
        for step in (10, 11, 12):
            produce_records(settings, topics.health, "HealthSignal",
                            [dict(s, step=step) for s in signals(m, epoch=2, sick="layers.1")])
    produce_records(settings, topics.outcomes, "EpochOutcome", [outcome(m, 2) for m in models])
    experience.wait_for(lambda ms: len(decisions_in(ms)) >= 4, timeout=90, alive=worker.alive)
    second = {d["model_id"]: d for d in decisions_in(experience.messages) if d["epoch"] == 2}
    assert (second["m-control"]["action"], second["m-control"]["layer_name"]) == ("GERMINATE", "layers.1")
    assert second["m-redecided"]["layer_name"] != "layers.1", second["m-redecided"]
    assert worker.alive()
    experience.close()
