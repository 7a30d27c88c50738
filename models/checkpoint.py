"""Pickle-free policy checkpoints: a directory with a state_dict, a config and a feature spec.

Layout::

    state_dict.pt      torch.save(policy.state_dict()) — tensors only, loaded with weights_only=True
    config.json        PolicyConfig.to_dict()
    feature_spec.json  {"feature_names", "feature_spec_version", "kernels", "action_layout"}
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from models.actions import DEFAULT_KERNELS, legal_mask
from models.graph import FEATURE_NAMES, FEATURE_SPEC_VERSION, ModelGraph
from models.policy import PolicyConfig, TamiyoPolicyGNN, collate

STATE_FILE = "state_dict.pt"
CONFIG_FILE = "config.json"
FEATURE_SPEC_FILE = "feature_spec.json"
ACTION_LAYOUT = "wait,layer*K+kernel"


class IncompatiblePolicyError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not match this code's features/kernels."""


def feature_spec(kernels: Sequence[str] = DEFAULT_KERNELS) -> dict:
    """The spec this code produces and expects."""
    return {
        "feature_names": list(FEATURE_NAMES),
        "feature_spec_version": FEATURE_SPEC_VERSION,
        "kernels": list(kernels),
        "action_layout": ACTION_LAYOUT,
    }


def save_policy(policy: TamiyoPolicyGNN, directory: Path, kernels: Sequence[str] = DEFAULT_KERNELS) -> None:
    """Write the three checkpoint files into ``directory`` (created if needed)."""
    if len(kernels) != policy.config.num_kernels:
        raise ValueError(f"{len(kernels)} kernels for a policy with num_kernels={policy.config.num_kernels}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in policy.state_dict().items()}
    torch.save(state, directory / STATE_FILE)
    (directory / CONFIG_FILE).write_text(json.dumps(policy.config.to_dict(), indent=1, sort_keys=True))
    (directory / FEATURE_SPEC_FILE).write_text(json.dumps(feature_spec(kernels), indent=1))


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise IncompatiblePolicyError(f"checkpoint file missing: {path}") from None
    except (OSError, ValueError) as exc:
        raise IncompatiblePolicyError(f"unreadable checkpoint file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise IncompatiblePolicyError(f"{path} must hold a JSON object")
    return data


def _smoke_graph() -> ModelGraph:
    x = np.zeros((2, len(FEATURE_NAMES)), dtype=np.float32)
    x[:, 0] = 0.5
    return ModelGraph(
        model_id="smoke",
        run_id="smoke",
        layer_names=["a", "b"],
        node_features=x,
        edge_index=np.array([[0], [1]], dtype=np.int64),
        dormant_seed=[0, None],
        epoch=0,
    )


def load_policy(
    directory: Path,
    kernels: Sequence[str] = DEFAULT_KERNELS,
    version: str | None = None,
) -> TamiyoPolicyGNN:
    """Load, verify and return a policy in eval mode.

    Checks: all files present and parseable; feature names/version and kernels equal this
    code's (``kernels`` is the catalog the caller will decode actions with); the
    state_dict (loaded with ``weights_only=True``) matches the config exactly and is
    finite; a smoke inference on a 2-node graph gives finite outputs and a distribution
    summing to 1. Any failure raises :class:`IncompatiblePolicyError`.

    ``version`` becomes ``policy.version``; default ``"sha256:<first 12 hex of state_dict.pt>"``.
    """
    directory = Path(directory)
    spec = _read_json(directory / FEATURE_SPEC_FILE)
    expected = feature_spec(kernels)
    for key in ("feature_spec_version", "feature_names", "kernels", "action_layout"):
        if spec.get(key) != expected[key]:
            raise IncompatiblePolicyError(
                f"checkpoint {directory} has {key}={spec.get(key)!r}, this code expects {expected[key]!r}"
            )
    try:
        config = PolicyConfig.from_dict(_read_json(directory / CONFIG_FILE))
    except (TypeError, ValueError) as exc:
        raise IncompatiblePolicyError(f"bad {CONFIG_FILE} in {directory}: {exc}") from exc
    if config.node_feature_dim != len(FEATURE_NAMES) or config.num_kernels != len(kernels):
        raise IncompatiblePolicyError(
            f"config expects {config.node_feature_dim} features / {config.num_kernels} kernels, "
            f"code has {len(FEATURE_NAMES)} / {len(kernels)}"
        )

    state_path = directory / STATE_FILE
    try:
        raw = state_path.read_bytes()
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise IncompatiblePolicyError(f"checkpoint file missing: {state_path}") from None
    except Exception as exc:  # torch raises many types for corrupt/unsafe files
        raise IncompatiblePolicyError(f"cannot load {state_path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise IncompatiblePolicyError(f"{state_path} is not a state_dict of tensors")

    try:
        policy = TamiyoPolicyGNN(config)
        policy.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise IncompatiblePolicyError(f"state_dict does not fit config in {directory}: {exc}") from exc
    if not all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()):
        raise IncompatiblePolicyError(f"{state_path} holds non-finite weights")
    policy.eval()

    graph = _smoke_graph()
    try:
        probs, values = policy.distributions(collate([graph]), [legal_mask(graph, config.num_kernels, ())])
    except Exception as exc:
        raise IncompatiblePolicyError(f"smoke inference failed for {directory}: {exc}") from exc
    p = probs[0]
    if not (np.isfinite(p).all() and np.isfinite(values).all() and math.isclose(p.sum(), 1.0, abs_tol=1e-6)):
        raise IncompatiblePolicyError(f"smoke inference gave non-finite output for {directory}")

    policy.version = version or "sha256:" + hashlib.sha256(raw).hexdigest()[:12]
    return policy
