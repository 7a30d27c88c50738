"""The MLflow policy registry on a real sqlite store: round trip, aliases, rollback, refusing bad versions."""

from __future__ import annotations

import io
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from models.checkpoint import IncompatiblePolicyError, save_policy
from models.policy import PolicyConfig, TamiyoPolicyGNN, collate
from tamiyo.config import Settings
from training.cli import cmd_promote, cmd_rollback
from training.dataset import TransitionDataset, synthetic_transitions
from training.job import _promote_checked, ensure_experiment
from training.registry import CHAMPION, PREVIOUS, ChampionMoved, PolicyRegistry


@pytest.fixture
def registry(tracking_uri: str) -> PolicyRegistry:
    return PolicyRegistry(tracking_uri, "test-policy")


def policy(seed: int, hidden: int = 16) -> TamiyoPolicyGNN:
    torch.manual_seed(seed)
    return TamiyoPolicyGNN(PolicyConfig(hidden_dim=hidden)).eval()


def register(registry: PolicyRegistry, tmp_path: Path, net: TamiyoPolicyGNN, name: str) -> str:
    """Save ``net`` and register it for a finished run of the 'tamiyo' experiment."""
    directory = tmp_path / name
    save_policy(net, directory)
    experiment = ensure_experiment(registry.tracking_uri, "tamiyo")
    with mlflow.start_run(experiment_id=experiment) as run:
        pass
    return registry.register(directory, run.info.run_id, tags={"case": name})


@pytest.fixture(scope="module")
def probe():
    data = TransitionDataset.from_transitions(synthetic_transitions(episodes=4, steps=5, seed=2))
    return collate(data.graphs), data.masks


def test_register_then_load_gives_identical_outputs(registry, tmp_path, probe) -> None:
    net = policy(1)
    version = register(registry, tmp_path, net, "a")
    assert version == "1" and registry.champion() is None
    loaded = registry.load(version, tmp_path / "download")
    assert loaded.version == "test-policy/v1" and not loaded.training
    for (name, a), b in zip(net.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    batch, masks = probe
    ours, values = net.distributions(batch, masks)
    theirs, values2 = loaded.distributions(batch, masks)
    assert all(np.array_equal(x, y) for x, y in zip(ours, theirs)) and np.array_equal(values, values2)
    # registered after its run ended, the LoggedModel still sits in the run's experiment (not in
    # Default, whose artifacts would land in ./mlruns), with its artifacts next to the database
    mv = registry.client.get_model_version("test-policy", version)
    assert mv.tags["case"] == "a" and mv.run_id
    model = registry.client.get_logged_model(mv.source.removeprefix("models:/"))
    assert model.experiment_id == registry.client.get_run(mv.run_id).info.experiment_id
    assert registry.client.get_experiment(model.experiment_id).name == "tamiyo"
    db_dir = Path(registry.tracking_uri.removeprefix("sqlite:///")).parent
    assert any((db_dir / "artifacts").rglob("state_dict.pt"))


def test_promote_sets_champion_and_previous_and_rollback_swaps_them(registry, tmp_path) -> None:
    v1, v2 = register(registry, tmp_path, policy(1), "a"), register(registry, tmp_path, policy(2), "b")
    registry.promote(v1, "first")
    assert registry.champion().version == v1 and registry.alias_version(PREVIOUS) is None
    registry.promote(v2, "better")
    assert registry.champion().version == v2 and registry.alias_version(PREVIOUS) == v1
    tags = registry.client.get_model_version("test-policy", v2).tags
    assert tags["gate"] == "promoted" and tags["promotion_reason"] == "better"
    assert registry.champion().run_id == registry.client.get_model_version("test-policy", v2).run_id

    assert registry.rollback() == v1
    assert registry.alias_version(CHAMPION) == v1 and registry.alias_version(PREVIOUS) == v2
    assert registry.client.get_model_version("test-policy", v2).tags["gate"] == "rolled_back"
    registry.reject(v2, "worse on held-out data")
    assert registry.client.get_model_version("test-policy", v2).tags["rejection_reason"] == "worse on held-out data"


def test_promote_refuses_when_the_champion_moved_since_the_evaluation(registry, tmp_path) -> None:
    v1, v2, v3 = (register(registry, tmp_path, policy(i), name) for i, name in ((1, "a"), (2, "b"), (3, "c")))
    registry.promote(v1, "first", expected_champion=None)
    with pytest.raises(ChampionMoved, match="champion is now v1, not unset"):
        registry.promote(v2, "judged when there was no champion", expected_champion=None)
    registry.promote(v2, "judged against v1", expected_champion=v1)
    with pytest.raises(ChampionMoved, match="now v2, not v1"):
        registry.promote(v3, "judged against v1 too", expected_champion=v1)
    assert registry.champion().version == v2 and registry.alias_version(PREVIOUS) == v1

    # the training job's promotion: a version that passed against v1 is refused and tagged, not promoted
    promoted, reason = _promote_checked(registry, v3, "beat v1", "test", champion_before=v1)
    assert not promoted and "not promoted" in reason and "now v2" in reason
    assert registry.champion().version == v2
    assert registry.client.get_model_version("test-policy", v3).tags["gate"] == "rejected"
    assert _promote_checked(registry, v3, "beat v2", "test", champion_before=v2) == (True, "beat v2")
    assert registry.champion().version == v3 and registry.alias_version(PREVIOUS) == v2


def test_the_job_never_promotes_a_version_workers_could_not_load(registry, tmp_path) -> None:
    """A diverged network (NaN weights) can still "win" the gate: its NaN logits are masked to WAIT."""
    net = policy(1)
    with torch.no_grad():
        next(net.parameters()).fill_(float("nan"))
    version = register(registry, tmp_path, net, "diverged")
    promoted, reason = _promote_checked(registry, version, "lower bound beat the champion", "test", None)
    assert not promoted and "workers could not load it" in reason and "non-finite" in reason
    assert registry.champion() is None
    assert registry.client.get_model_version("test-policy", version).tags["gate"] == "rejected"


def test_rollback_without_a_previous_champion_fails_clearly(registry, tmp_path) -> None:
    with pytest.raises(RuntimeError, match="no 'previous'"):
        registry.rollback()
    registry.promote(register(registry, tmp_path, policy(1), "a"), "only one")
    with pytest.raises(RuntimeError, match="no 'previous'"):
        registry.rollback()


def test_a_version_with_a_wrong_shaped_state_dict_is_refused(registry, tmp_path) -> None:
    directory = tmp_path / "corrupt"
    save_policy(policy(1, hidden=16), directory)
    state = policy(1, hidden=8).state_dict()  # right keys, wrong shapes for hidden_dim=16
    buf = io.BytesIO()
    torch.save(state, buf)
    (directory / "state_dict.pt").write_bytes(buf.getvalue())
    experiment = ensure_experiment(registry.tracking_uri, "tamiyo")
    with mlflow.start_run(experiment_id=experiment) as run:
        version = registry.register(directory, run.info.run_id)
    with pytest.raises(IncompatiblePolicyError, match="does not fit config"):
        registry.load(version, tmp_path / "download")


def test_a_version_from_another_kernel_catalog_is_refused(registry, tmp_path) -> None:
    directory = tmp_path / "other-kernels"
    save_policy(policy(1), directory)
    spec = json.loads((directory / "feature_spec.json").read_text())
    spec["kernels"] = ["a", "b", "c"]
    (directory / "feature_spec.json").write_text(json.dumps(spec))
    experiment = ensure_experiment(registry.tracking_uri, "tamiyo")
    with mlflow.start_run(experiment_id=experiment) as run:
        version = registry.register(directory, run.info.run_id)
    with pytest.raises(IncompatiblePolicyError, match="kernels"):
        registry.load(version, tmp_path / "download")


def test_cli_promote_validates_first_and_rollback_reports(registry, tracking_uri, tmp_path, capsys) -> None:
    settings = Settings(data_dir=tmp_path, mlflow_tracking_uri=tracking_uri, registered_model="test-policy")
    good = register(registry, tmp_path, policy(1), "good")
    directory = tmp_path / "bad"
    save_policy(policy(2), directory)
    (directory / "state_dict.pt").write_bytes(b"\x00 not a tensor file")
    experiment = ensure_experiment(tracking_uri, "tamiyo")
    with mlflow.start_run(experiment_id=experiment) as run:
        bad = registry.register(directory, run.info.run_id)

    cmd_promote(settings, good, "manual")
    with pytest.raises(IncompatiblePolicyError, match="cannot load"):
        cmd_promote(settings, bad)
    assert registry.champion().version == good  # the corrupt version never became champion
    other = register(registry, tmp_path, policy(3), "other")
    cmd_promote(settings, other)
    assert cmd_rollback(settings) == good
    out = capsys.readouterr().out
    assert f"champion is now v{other} (was v{good})" in out and f"rolled back; champion is now v{good}" in out
