"""Hot swap on a real worker: promoted versions are served within the poll interval; corrupt ones are refused."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from models.checkpoint import save_policy
from models.policy import PolicyConfig, TamiyoPolicyGNN
from schemas import decode
from streams.archive import TYPE_HEADER
from streams.kafka.reader import header
from tests.streams.kafka_io import TopicCollector, produce_records
from tests.streams.test_worker_kafka import outcome, signals, topology
from training.registry import PolicyRegistry

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
POLL_S = 1.0


def policy_dir(tmp: Path, name: str, seed: int, corrupt: bool = False) -> Path:
    torch.manual_seed(seed)
    directory = tmp / name
    save_policy(TamiyoPolicyGNN(PolicyConfig()), directory)
    if corrupt:  # right file names, wrong tensors: must fail validation, not crash the worker
        torch.save({"encoder_in.weight": torch.zeros(3, 3)}, directory / "state_dict.pt")
    return directory


def versions_decided(messages: list, epoch: int) -> list[str]:
    return [decode(m.value()).value["policy_version"] for m in messages
            if header(m, TYPE_HEADER) == "DecisionRecord" and decode(m.value()).value["epoch"] == epoch]


def test_worker_serves_promoted_versions_and_refuses_a_corrupt_one(topics_ready, start_worker, tmp_path) -> None:
    settings = topics_ready
    topics = settings.topics
    registry = PolicyRegistry(settings.tracking_uri, "tamiyo-policy")
    v1 = registry.register(policy_dir(tmp_path, "v1", seed=1), run_id=None)
    registry.promote(v1, "test")
    worker = start_worker(TAMIYO_POLICY="champion", MLFLOW_TRACKING_URI=settings.tracking_uri,
                          TAMIYO_CHAMPION_POLL_SECONDS=str(POLL_S), TAMIYO_EPSILON="0.0",
                          TAMIYO_SIGNAL_WAIT_SECONDS="0.2")
    experience = TopicCollector(settings, topics.experience)
    produce_records(settings, topics.topology, "ModelTopology", [topology("m-hot")])

    def decide_epoch(epoch: int) -> str:
        produce_records(settings, topics.health, "HealthSignal", signals("m-hot", epoch))
        produce_records(settings, topics.outcomes, "EpochOutcome", [outcome("m-hot", epoch)])
        experience.wait_for(lambda ms: len(versions_decided(ms, epoch)) == 1, timeout=90, alive=worker.alive)
        return versions_decided(experience.messages, epoch)[0]

    assert decide_epoch(1) == "tamiyo-policy/v" + v1  # the champion is served from the first decision

    v2 = registry.register(policy_dir(tmp_path, "v2", seed=2), run_id=None)
    registry.promote(v2, "test")
    promoted_at = time.monotonic()
    time.sleep(POLL_S + 2.0)  # the poll interval, plus download and validation
    assert decide_epoch(2) == "tamiyo-policy/v" + v2
    assert time.monotonic() - promoted_at < 30
    assert registry.alias_version("previous") == v1

    v3 = registry.register(policy_dir(tmp_path, "v3", seed=3, corrupt=True), run_id=None)
    registry.promote(v3, "test")
    time.sleep(POLL_S + 2.0)
    assert decide_epoch(3) == "tamiyo-policy/v" + v2  # refused: the old version keeps serving
    assert worker.alive()
    assert "refused tamiyo-policy/v" + v3 in worker.log()
    experience.close()
