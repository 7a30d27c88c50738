"""``tamiyo status``: topics, worker-group lag, champion and latest decisions, on a real broker."""

from __future__ import annotations

import dataclasses
import io
import time

import pytest
from confluent_kafka import TopicPartition

from schemas import encode
from streams.archive import TYPE_HEADER
from streams.kafka.clients import make_consumer, make_producer
from tamiyo.status import StatusOptions, champion, collect_status, render, run_status
from tests.samples import SAMPLES


def decision(model_id: str, epoch: int, action: str = "WAIT") -> dict:
    return dict(SAMPLES["DecisionRecord"], decision_id=f"{model_id}-{epoch}", model_id=model_id, epoch=epoch,
                timestamp_ms=int(time.time() * 1000) - 1000 + epoch, action=action,
                layer_name="layers.0" if action == "GERMINATE" else None)


@pytest.mark.kafka
def test_status_reports_topics_lag_champion_and_latest_decisions(topics_ready) -> None:
    settings = topics_ready
    topics = settings.topics
    producer = make_producer(settings)
    for i in range(6):
        signal = dict(SAMPLES["HealthSignal"], model_id=f"m-{i % 2}")
        producer.produce(topics.health, encode("HealthSignal", signal), signal["model_id"].encode())
    experience = [decision("m-a", 1), decision("m-a", 2, "GERMINATE"), decision("m-b", 1)]
    for record in experience:
        producer.produce(topics.experience, encode("DecisionRecord", record), record["model_id"].encode(),
                         headers=[(TYPE_HEADER, b"DecisionRecord")])
    producer.produce(topics.experience, encode("HealthSignal", SAMPLES["HealthSignal"]), b"m-1",
                     headers=[(TYPE_HEADER, b"HealthSignal")])
    assert producer.flush(30) == 0

    # The worker group has committed part of the health topic: 2 records behind on partition 0.
    probe = make_consumer(settings)
    ends = {p: probe.get_watermark_offsets(TopicPartition(topics.health, p), timeout=10)[1] for p in (0, 1)}
    probe.close()
    group = make_consumer(settings, group_id=settings.worker_group, **{"enable.auto.commit": False})
    committed = {0: max(ends[0] - 2, 0), 1: ends[1]}
    group.commit(offsets=[TopicPartition(topics.health, p, o) for p, o in committed.items()], asynchronous=False)
    group.close()

    status = collect_status(settings, StatusOptions(registry_timeout_s=3))
    assert status["errors"] == {}
    assert status["topics"][topics.health]["partitions"] == 2
    assert sum(status["topics"][topics.health]["end_offsets"].values()) == 6
    assert sum(status["topics"][topics.experience]["end_offsets"].values()) == 4
    lag = status["worker_group"]
    assert lag["group"] == f"{settings.topic_prefix}-worker"
    assert lag["topics"][topics.health]["lag"] == ends[0] - committed[0]
    assert lag["topics"][topics.outcomes]["lag"] == 0
    assert status["champion"]["state"] == "no registry" and status["champion"]["version"] == "none"
    decisions = status["decisions"]
    assert set(decisions) == {"m-a", "m-b"}
    assert decisions["m-a"]["epoch"] == 2 and decisions["m-a"]["action"] == "GERMINATE"

    text = render(status)
    assert topics.health in text and "lag" in text and "Champion: none" in text
    assert "m-a" in text and "GERMINATE" in text
    out = io.StringIO()
    assert run_status(settings, out, StatusOptions(registry_timeout_s=3)) == 0
    assert "Latest decision per model (2 models)" in out.getvalue()


@pytest.mark.kafka
def test_status_of_missing_topics_and_no_group(settings) -> None:
    """Before ``tamiyo topics``: every topic is reported missing, nothing crashes."""
    status = collect_status(settings, StatusOptions(registry_timeout_s=2))
    assert all(info.get("missing") for info in status["topics"].values())
    assert "missing" in render(status)


def test_status_without_kafka_reports_the_error(tmp_path) -> None:
    from tamiyo.config import Settings

    settings = Settings.from_env(bootstrap_servers="", data_dir=tmp_path)
    out = io.StringIO()
    assert run_status(settings, out, StatusOptions(registry_timeout_s=1)) == 1
    assert "error (kafka)" in out.getvalue()


def test_champion_unreachable_is_reported_quickly(tmp_path) -> None:
    from tamiyo.config import Settings

    settings = Settings.from_env(bootstrap_servers="127.0.0.1:1", data_dir=tmp_path,
                                 mlflow_tracking_uri="http://127.0.0.1:9")
    started = time.monotonic()
    answer = champion(settings, timeout=3.0)
    assert time.monotonic() - started < 4.5
    assert answer["state"] == "unreachable" and answer["version"] is None


def test_champion_version_from_the_registry(tmp_path, monkeypatch) -> None:
    import training.registry as registry_module
    from tamiyo.config import Settings
    from training.registry import ChampionRef

    class FakeRegistry:
        def __init__(self, uri: str, name: str) -> None:
            self.name = name

        def champion(self) -> ChampionRef:
            return ChampionRef("7", "run-1")

    monkeypatch.setattr(registry_module, "PolicyRegistry", FakeRegistry)
    settings = Settings.from_env(bootstrap_servers="127.0.0.1:1", data_dir=tmp_path)
    db = tmp_path / "mlflow" / "mlflow.db"
    db.parent.mkdir(parents=True)
    db.touch()
    answer = champion(settings, timeout=3.0)
    assert answer == {"version": "7", "state": "ok", "run_id": "run-1", "tracking_uri": settings.tracking_uri,
                      "serving_name": "tamiyo-policy/v7"}
    status = {"prefix": "p", "bootstrap": "b", "topics": {}, "champion": answer, "errors": {}}
    assert "Champion: version 7 (tamiyo-policy/v7)" in render(status)
    none = dataclasses.replace(settings, registered_model="other")
    monkeypatch.setattr(FakeRegistry, "champion", lambda self: None)
    assert champion(none, timeout=3.0)["state"] == "none"
