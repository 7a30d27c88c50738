"""The training job end to end: MLflow run contents, the gate through train(), the CLI, and
replay -> train on a real experience topic."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from models.actions import DEFAULT_KERNELS, decode
from models.checkpoint import save_policy
from models.graph import FEATURE_NAMES
from models.policy import PolicyConfig, TamiyoPolicyGNN
from tamiyo.config import Settings
from training.cli import add_training_commands, cmd_replay, cmd_train, parse_time_ms, train_config_from_args
from training.dataset import synthetic_transitions
from training.episodes import Transition
from training.job import TrainConfig, ensure_experiment, train_on_transitions
from training.registry import PolicyRegistry

FAST = dict(learner="awr", epochs=8, value_epochs=5, q_epochs=8, bootstrap_samples=200, gate_min_ess=10.0, progress=False)


@pytest.fixture
def local(tracking_uri: str, tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, mlflow_tracking_uri=tracking_uri, registered_model="job-policy")


@pytest.fixture(scope="module")
def uniform_log() -> list[Transition]:
    return synthetic_transitions(episodes=50, steps=10, behaviour="uniform", seed=21)


def test_train_promotes_a_better_policy_then_refuses_a_worse_one(local, uniform_log) -> None:
    first = train_on_transitions(local, TrainConfig(**FAST), uniform_log, {"source": "synthetic"})
    assert first.promoted and first.version == "1" and first.baseline == "behaviour"
    assert first.champion_before is None and first.n_transitions == 500 and first.n_train + first.n_heldout == 500
    challenger, behaviour = first.ope["challenger"].estimates["dr"], first.ope["behaviour"].estimates["dr"]
    assert challenger.low > behaviour.value + 0.3, (challenger, behaviour)
    registry = PolicyRegistry(local.tracking_uri, "job-policy")
    assert registry.champion().version == "1"

    # what the MLflow run holds
    client = MlflowClient(tracking_uri=local.tracking_uri)
    run = client.get_run(first.run_id)
    assert client.get_experiment(run.info.experiment_id).name == "tamiyo"
    assert run.data.params["learner"] == "awr" and run.data.params["epochs"] == "8"
    assert run.data.tags["registered_version"] == "1" and run.data.tags["gate.promoted"] == "True"
    losses = client.get_metric_history(first.run_id, "awr/policy/loss")
    assert [m.step for m in losses] == list(range(8))
    assert [m.value for m in losses] == pytest.approx(first.history["awr/policy/loss"])
    assert len(client.get_metric_history(first.run_id, "q/mse")) == 8
    assert run.data.metrics["ope/challenger/dr"] == pytest.approx(challenger.value)
    assert run.data.metrics["ope/challenger/dr_low"] == pytest.approx(challenger.low)
    artifacts = {a.path for a in client.list_artifacts(first.run_id)} | \
                {a.path for d in ("plots", "ope") for a in client.list_artifacts(first.run_id, d)}
    assert {"data_window.json", "plots/learning_curves.png", "plots/ope.png", "ope/table.json"} <= artifacts
    assert client.get_model_version("job-policy", "1").run_id == first.run_id

    # behaviour cloning of uniform logs is worse than the champion: registered, judged, rejected
    second = train_on_transitions(local, TrainConfig(**FAST | {"learner": "bc"}), uniform_log)
    assert not second.promoted and second.version == "2" and second.baseline == "champion"
    assert second.champion_before == "1" and "does not beat champion" in second.reason
    assert registry.champion().version == "1"
    assert client.get_model_version("job-policy", "2").tags["gate"] == "rejected"
    # the champion was scored on the same held-out rows as when it was the challenger
    assert second.ope["champion"].estimates["snips"].value == pytest.approx(
        first.ope["challenger"].estimates["snips"].value)
    assert {row["policy"] for row in second.ope_table} == {"challenger", "behaviour", "champion"}


def test_the_ess_floor_and_promote_false_keep_the_champion(local, uniform_log) -> None:
    strict = train_on_transitions(local, TrainConfig(**FAST | {"gate_min_ess": 1e6}), uniform_log)
    assert not strict.promoted and "effective sample size" in strict.reason
    dry = train_on_transitions(local, TrainConfig(promote=False, **FAST), uniform_log)
    assert not dry.promoted and "promotion disabled" in dry.reason
    registry = PolicyRegistry(local.tracking_uri, "job-policy")
    assert registry.champion() is None
    assert registry.client.get_model_version("job-policy", dry.version).tags["gate"] == "passed"


def test_an_unloadable_champion_falls_back_to_the_behaviour_baseline(local, uniform_log, tmp_path) -> None:
    registry = PolicyRegistry(local.tracking_uri, "job-policy")
    broken = tmp_path / "broken"
    save_policy(TamiyoPolicyGNN(PolicyConfig(hidden_dim=8)), broken)
    (broken / "state_dict.pt").write_bytes(b"garbage")
    with mlflow.start_run(experiment_id=ensure_experiment(local.tracking_uri, "tamiyo")) as run:
        pass
    registry.promote(registry.register(broken, run.info.run_id), "bypassing the gate")  # a careless operator
    result = train_on_transitions(local, TrainConfig(**FAST), uniform_log[:300])
    assert result.champion_before == "1" and result.baseline == "behaviour" and "champion" not in result.ope
    assert result.reason.startswith("champion v1 could not be loaded") and result.promoted
    assert registry.champion().version == result.version == "2"


def test_config_validation() -> None:
    for bad in ({"learner": "ppo"}, {"gate_estimator": "wis"}, {"heldout_fraction": 1.0}, {"epochs": 0}):
        with pytest.raises(ValueError):
            TrainConfig(**bad).validate()
    cfg = TrainConfig(learner="awr", awr_beta=2.0, epochs=3)
    assert cfg.learner_config().beta == 2.0 and cfg.learner_config().epochs == 3
    assert cfg.reward_config().horizon == 3 and cfg.gate_config().estimator == "dr"


def test_cli_flags_map_onto_train_config() -> None:
    parser = argparse.ArgumentParser(prog="tamiyo")
    sub = parser.add_subparsers(dest="command", required=True)
    made = add_training_commands(sub, lambda p: p.add_argument("--bootstrap"))
    assert set(made) == {"train", "promote", "rollback", "replay"}
    args = parser.parse_args(["train", "--learner", "bc", "--epochs", "4", "--no-promote", "--start",
                              "2024-01-01T00:00:00Z", "--end-offsets", "0:10,1:20", "--gate-min-ess", "5",
                              "--bootstrap", "127.0.0.1:9092"])
    cfg = train_config_from_args(args)
    assert cfg == TrainConfig(learner="bc", epochs=4, promote=False, start_ms=1_704_067_200_000,
                              end_offsets={0: 10, 1: 20}, gate_min_ess=5.0)
    assert args.bootstrap == "127.0.0.1:9092" and callable(args.func)
    assert parser.parse_args(["promote", "7"]).version == "7"
    assert parse_time_ms("1700000000000") == 1_700_000_000_000
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--end-offsets", "zero:ten"])


# --------------------------------------------------------------------------- Kafka end to end


def to_experience(steps: list[Transition], t0: int) -> list[tuple[str, dict]]:
    """Experience records whose reward join (horizon 1, no parameter cost) gives back each
    transition's reward: val_loss drops by the reward after every decision."""
    out: list[tuple[str, dict]] = []
    by_model: dict[str, list[Transition]] = {}
    for t in steps:
        by_model.setdefault(t.model_id, []).append(t)
    for m, (model, run) in enumerate(by_model.items()):
        val = 10.0
        for t in run:
            ts = t0 + m * 100 + t.epoch * 10_000
            out.append(("EpochOutcome", {"model_id": model, "run_id": t.run_id, "epoch": t.epoch, "timestamp_ms": ts,
                                         "train_loss": val, "val_loss": val, "train_accuracy": 0.5,
                                         "val_accuracy": 0.5, "parameter_count": 1000, "final": False}))
            act = decode(t.action, len(DEFAULT_KERNELS))
            out.append(("DecisionRecord", {
                "decision_id": t.decision_id, "model_id": model, "run_id": t.run_id, "epoch": t.epoch,
                "timestamp_ms": ts + 1, "trigger": "epoch_end", "policy_version": t.policy_version,
                "action": "WAIT" if act is None else "GERMINATE",
                "layer_name": None if act is None else t.state.layer_names[act[0]],
                "seed_index": None if act is None else 0, "kernel": None if act is None else DEFAULT_KERNELS[act[1]],
                "action_index": t.action, "propensity": t.propensity, "distribution": t.behaviour.tolist(),
                "kernels": list(DEFAULT_KERNELS), "value_estimate": 0.0, "gate": "none",
                "feature_names": list(FEATURE_NAMES), "layer_names": t.state.layer_names,
                "node_features": t.state.node_features.tolist(), "edge_source": t.state.edge_index[0].tolist(),
                "edge_target": t.state.edge_index[1].tolist(), "legal_mask": t.state.legal.tobytes()}))
            val -= t.reward
        last = run[-1].epoch + 1
        out.append(("EpochOutcome", {"model_id": model, "run_id": run[-1].run_id, "epoch": last,
                                     "timestamp_ms": t0 + m * 100 + last * 10_000, "train_loss": val, "val_loss": val,
                                     "train_accuracy": 0.5, "val_accuracy": 0.5, "parameter_count": 1000,
                                     "final": True}))
    return out


@pytest.mark.kafka
def test_replay_then_train_from_the_experience_topic(topics_ready, tracking_uri, tmp_path) -> None:
    from schemas import encode
    from streams.kafka.clients import make_producer

    settings = dataclasses.replace(topics_ready, mlflow_tracking_uri=tracking_uri)
    steps = synthetic_transitions(episodes=40, steps=8, behaviour="uniform", seed=4)
    items = to_experience(steps, t0=int(time.time() * 1000) - 600_000)
    producer = make_producer(settings)
    for name, value in items + items[:30]:  # at-least-once: the first 30 records arrive twice
        producer.produce(settings.topics.experience, key=value["model_id"].encode(), value=encode(name, value))
    assert producer.flush(30) == 0
    del producer

    out = io.StringIO()
    summary = cmd_replay(settings, out=out)
    assert summary["records"] == len(items) + 30 and summary["episodes"] == 40 and summary["finished"] == 40
    assert summary["transitions"] == len(steps) == 320 and summary["imputed_rewards"] == 0
    assert summary["redecided"] == 0  # identical copies are duplicates, not differing re-decisions
    assert summary["unmatched"] == 0

    cfg = TrainConfig(horizon=1, parameter_cost=0.0, **FAST)
    result = cmd_train(settings, cfg, out=out)
    assert result.n_transitions == 320 and result.promoted, result.reason
    assert "PROMOTED to champion" in out.getvalue()
    client = MlflowClient(tracking_uri=tracking_uri)
    data_window = json.loads(Path(client.download_artifacts(result.run_id, "data_window.json", str(tmp_path)))
                             .read_text())
    assert data_window["topic"] == settings.topics.experience and data_window["transitions"] == 320
    assert data_window["redecided_ids"] == 0 and data_window["unmatched_ids"] == 0
    assert data_window["records"] == len(items) + 30 and sum(data_window["end_offsets"].values()) == len(items) + 30


def test_dead_runs_are_judged_against_the_end_of_the_data_window() -> None:
    """With end offsets, "now" would make every run of an old window look silent for hours."""
    from training.job import data_end
    from training.replay import ExperienceRecord

    records = [ExperienceRecord("EpochOutcome", {}, 0, i, ts) for i, ts in enumerate((5_000, 9_000, 7_000))]
    assert data_end(TrainConfig(end_ms=8_000, end_offsets={0: 3}), records) == 8_000
    assert data_end(TrainConfig(end_offsets={0: 3}), records) == 9_000
    before = int(time.time() * 1000)
    assert before <= data_end(TrainConfig(), records) <= int(time.time() * 1000)
    assert before <= data_end(TrainConfig(end_offsets={0: 0}), []) <= int(time.time() * 1000)
