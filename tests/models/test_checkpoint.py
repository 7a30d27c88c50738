"""Pickle-free checkpoints (models.checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.actions import legal_mask
from models.checkpoint import (
    CONFIG_FILE,
    FEATURE_SPEC_FILE,
    STATE_FILE,
    IncompatiblePolicyError,
    load_policy,
    save_policy,
)
from models.graph import FEATURE_NAMES, FEATURE_SPEC_VERSION, ModelGraph
from models.policy import PolicyConfig, TamiyoPolicyGNN, collate


class NotATensor:
    """A pickled object of this class must be refused by weights_only loading."""


def _graph() -> ModelGraph:
    rng = np.random.default_rng(0)
    return ModelGraph("m", "r", ["a", "b", "c"], rng.normal(size=(3, len(FEATURE_NAMES))).astype(np.float32),
                      np.array([[0, 1], [1, 2]], dtype=np.int64), [0, 0, None], 1)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[TamiyoPolicyGNN, Path]:
    torch.manual_seed(0)
    policy = TamiyoPolicyGNN(PolicyConfig(hidden_dim=16, num_gnn_layers=2)).eval()
    save_policy(policy, tmp_path / "ckpt")
    return policy, tmp_path / "ckpt"


def test_roundtrip(saved) -> None:
    policy, path = saved
    assert {p.name for p in path.iterdir()} == {STATE_FILE, CONFIG_FILE, FEATURE_SPEC_FILE}
    spec = json.loads((path / FEATURE_SPEC_FILE).read_text())
    assert spec["feature_names"] == list(FEATURE_NAMES) and spec["feature_spec_version"] == FEATURE_SPEC_VERSION
    assert spec["kernels"] == ["mlp_small", "mlp_wide", "lowrank"]
    assert json.loads((path / CONFIG_FILE).read_text())["hidden_dim"] == 16

    loaded = load_policy(path)
    assert not loaded.training
    assert loaded.config == policy.config
    assert loaded.version.startswith("sha256:") and len(loaded.version) == len("sha256:") + 12
    a, b = policy.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    g = _graph()
    pa, va = policy.distributions(collate([g]), [legal_mask(g, 3)])
    pb, vb = loaded.distributions(collate([g]), [legal_mask(g, 3)])
    assert np.array_equal(pa[0], pb[0]) and np.array_equal(va, vb)
    assert load_policy(path, version="tamiyo-policy/4").version == "tamiyo-policy/4"


def test_refuses_corrupt_state(saved) -> None:
    _, path = saved
    data = (path / STATE_FILE).read_bytes()
    (path / STATE_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(IncompatiblePolicyError, match="cannot load"):
        load_policy(path)
    (path / STATE_FILE).write_bytes(b"not a checkpoint at all")
    with pytest.raises(IncompatiblePolicyError):
        load_policy(path)
    (path / STATE_FILE).unlink()
    with pytest.raises(IncompatiblePolicyError, match="missing"):
        load_policy(path)


def test_refuses_pickled_objects(saved) -> None:
    policy, path = saved
    state = dict(policy.state_dict())
    state["extra"] = NotATensor()
    torch.save(state, path / STATE_FILE)
    with pytest.raises(IncompatiblePolicyError, match="cannot load"):
        load_policy(path)


def test_refuses_non_finite_and_mismatched_weights(saved) -> None:
    policy, path = saved
    state = {k: v.clone() for k, v in policy.state_dict().items()}
    state["action_out.bias"][0] = float("nan")
    torch.save(state, path / STATE_FILE)
    with pytest.raises(IncompatiblePolicyError, match="non-finite"):
        load_policy(path)
    torch.save(TamiyoPolicyGNN(PolicyConfig(hidden_dim=8, num_gnn_layers=2)).state_dict(), path / STATE_FILE)
    with pytest.raises(IncompatiblePolicyError, match="does not fit"):
        load_policy(path)


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("feature_names", list(FEATURE_NAMES)[::-1], "feature_names"),
        ("feature_spec_version", "v0", "feature_spec_version"),
        ("kernels", ["mlp_small", "mlp_wide", "other"], "kernels"),
    ],
)
def test_refuses_feature_spec_mismatch(saved, key, value, match) -> None:
    _, path = saved
    spec = json.loads((path / FEATURE_SPEC_FILE).read_text())
    spec[key] = value
    (path / FEATURE_SPEC_FILE).write_text(json.dumps(spec))
    with pytest.raises(IncompatiblePolicyError, match=match):
        load_policy(path)


def test_refuses_config_mismatch(saved) -> None:
    _, path = saved
    with pytest.raises(IncompatiblePolicyError, match="kernels"):
        load_policy(path, kernels=("mlp_small", "lowrank"))
    cfg = json.loads((path / CONFIG_FILE).read_text())
    (path / CONFIG_FILE).write_text(json.dumps({**cfg, "node_feature_dim": 7}))
    with pytest.raises(IncompatiblePolicyError, match="features"):
        load_policy(path)
    (path / CONFIG_FILE).write_text(json.dumps({**cfg, "mystery": 1}))
    with pytest.raises(IncompatiblePolicyError, match="unknown"):
        load_policy(path)
    (path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(IncompatiblePolicyError, match="unreadable"):
        load_policy(path)


def test_save_checks_kernel_count(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        save_policy(TamiyoPolicyGNN(), tmp_path, kernels=("only_one",))
