"""Action space, safety gates, sampling and decide_batch (models.actions, models.decide)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.actions import DEFAULT_KERNELS, WAIT, decode, encode, legal_mask, num_actions
from models.decide import (
    Decision,
    GateConfig,
    GateState,
    blocked_layers,
    cap_reached,
    decide_batch,
    gate_batch,
    gate_distribution,
    sample,
    sample_batch,
)
from models.graph import FEATURE_INDEX, FEATURE_NAMES, ModelGraph
from models.heuristic import ThresholdHeuristic
from models.policy import TamiyoPolicyGNN

K = 3


def graph(health: list[float], dormant: list[int | None] | None = None, epoch: int = 5) -> ModelGraph:
    n = len(health)
    x = np.zeros((n, len(FEATURE_NAMES)), dtype=np.float32)
    x[:, FEATURE_INDEX["health_mean"]] = health
    x[:, FEATURE_INDEX["has_data"]] = 1.0
    return ModelGraph(
        model_id="m",
        run_id="r",
        layer_names=[f"L{i}" for i in range(n)],
        node_features=x,
        edge_index=np.array([list(range(n - 1)), list(range(1, n))], dtype=np.int64),
        dormant_seed=[0] * n if dormant is None else dormant,
        epoch=epoch,
    )


# --------------------------------------------------------------------------- actions


def test_encode_decode_roundtrip() -> None:
    assert num_actions(4, K) == 13 and num_actions(0, K) == 1
    assert decode(WAIT, K) is None
    seen = {encode(i, k, K) for i in range(4) for k in range(K)}
    assert seen == set(range(1, 13))
    for i in range(4):
        for k in range(K):
            assert decode(encode(i, k, K), K) == (i, k)
    assert encode(2, 1, K) == 1 + 2 * K + 1
    with pytest.raises(ValueError):
        encode(0, K, K)
    with pytest.raises(ValueError):
        decode(-1, K)


def test_legal_mask() -> None:
    g = graph([0.5, 0.5, 0.5], dormant=[2, None, 0])
    m = legal_mask(g, K, blocked_layers={"L2"})
    assert m.dtype == bool and m.shape == (10,)
    assert m.tolist() == [True] + [True] * 3 + [False] * 3 + [False] * 3
    assert legal_mask(g, K).tolist() == [True] + [True] * 3 + [False] * 3 + [True] * 3


def test_default_kernels_match_catalog() -> None:
    kernels = pytest.importorskip("models.kernels")
    assert DEFAULT_KERNELS == kernels.KERNELS


# --------------------------------------------------------------------------- gates


def test_blocked_layers_and_cap() -> None:
    last = {"a": 5, "b": 4, "c": 3, "d": 7}
    assert blocked_layers(last, epoch=5, cooldown_epochs=2) == {"a", "b", "d"}
    assert blocked_layers(last, epoch=6, cooldown_epochs=2) == {"a", "d"}
    assert blocked_layers(last, epoch=7, cooldown_epochs=2) == {"d"}
    assert blocked_layers(last, epoch=9, cooldown_epochs=0) == set()
    cfg = GateConfig(max_adaptations_per_epoch=1)
    assert not cap_reached(0, cfg) and cap_reached(1, cfg)


def test_confidence_gate_moves_adapt_mass_to_wait() -> None:
    legal = np.array([True, True, True, False])
    cfg = GateConfig(confidence_threshold=0.5, epsilon=0.0)
    final, gate = gate_distribution(np.array([0.7, 0.2, 0.1, 0.0]), legal, cfg)
    assert gate == "confidence" and final.tolist() == [1.0, 0.0, 0.0, 0.0]
    final, gate = gate_distribution(np.array([0.4, 0.5, 0.1, 0.0]), legal, cfg)
    assert gate == "none"
    np.testing.assert_allclose(final, [0.4, 0.5, 0.1, 0.0])
    final, gate = gate_distribution(np.array([1.0, 0.0, 0.0, 0.0]), legal, cfg)
    assert gate == "none" and final[0] == 1.0  # nothing to move


def test_epsilon_mixing_and_illegal_zero() -> None:
    legal = np.array([True, True, False, True])
    probs = np.array([0.1, 0.6, 0.0, 0.3])
    final, gate = gate_distribution(probs, legal, GateConfig(confidence_threshold=0.5, epsilon=0.2))
    np.testing.assert_allclose(final, 0.8 * probs + 0.2 * np.array([1, 1, 0, 1]) / 3)
    assert final[2] == 0.0 and final.sum() == pytest.approx(1.0, abs=1e-12)
    # exploration may re-open actions the confidence gate closed (never illegal ones)
    final, gate = gate_distribution(np.array([0.9, 0.1, 0.0, 0.0]), legal, GateConfig(epsilon=0.3))
    assert gate == "confidence"
    np.testing.assert_allclose(final, [0.7 + 0.1, 0.1, 0.0, 0.1])
    # probabilities on illegal actions are discarded even if the policy produced them
    final, _ = gate_distribution(np.array([0.2, 0.2, 0.6, 0.0]), legal, GateConfig(confidence_threshold=0.1, epsilon=0))
    assert final.tolist() == [0.5, 0.5, 0.0, 0.0]


def test_gate_batch_rejects_illegal_wait() -> None:
    with pytest.raises(ValueError):
        gate_batch(np.array([[0.5, 0.5]]), np.array([[False, True]]), GateConfig())


def test_sample_propensity_is_exact_and_never_illegal() -> None:
    rng = np.random.default_rng(3)
    final = np.array([0.1, 0.0, 0.6, 0.0, 0.3, 0.0])
    counts = np.zeros(len(final))
    for _ in range(20_000):
        i, prop = sample(final, rng)
        assert prop == final[i]
        counts[i] += 1
    assert counts[[1, 3, 5]].sum() == 0
    np.testing.assert_allclose(counts / counts.sum(), final, atol=0.015)
    # batched with padding zeros at the end, and a last-entry-only row
    rows = np.array([[0.0, 0.0, 1.0, 0.0], [0.25, 0.75, 0.0, 0.0]])
    for _ in range(200):
        idx, prop = sample_batch(rows, rng)
        assert idx[0] == 2 and idx[1] in (0, 1)
        assert np.array_equal(prop, rows[[0, 1], idx])


# --------------------------------------------------------------------------- decide_batch


def test_decide_batch_with_heuristic_gates() -> None:
    rng = np.random.default_rng(0)
    cfg = GateConfig(epsilon=0.0)
    graphs = [
        graph([0.9, 0.1, 0.2], dormant=[0, 3, 1]),  # adapt L1 seed 3
        graph([0.9, 0.1, 0.2], dormant=[0, 3, 1]),  # L1 in cooldown -> L2 seed 1
        graph([0.9, 0.1, 0.2]),  # cap reached -> WAIT
        graph([0.9, 0.8]),  # healthy -> WAIT, no gate
        graph([]),  # no layers -> WAIT
    ]
    states = [
        GateState(),
        {"last_adapted_epoch": {"L1": 4}, "adaptations_this_epoch": 0},
        GateState(adaptations_this_epoch=1),
        GateState(last_adapted_epoch={"L0": 1}),
        GateState(),
    ]
    ds = decide_batch(graphs, ThresholdHeuristic(), states, cfg, rng, DEFAULT_KERNELS)
    assert [d.action for d in ds] == ["GERMINATE", "GERMINATE", "WAIT", "WAIT", "WAIT"]
    assert (ds[0].layer_name, ds[0].seed_index, ds[0].kernel) == ("L1", 3, "mlp_small")
    assert ds[0].action_index == encode(1, 0, K) and ds[0].gate == "none"
    assert (ds[1].layer_name, ds[1].seed_index, ds[1].gate) == ("L2", 1, "cooldown")
    assert ds[2].gate == "cap" and ds[2].distribution[1:].sum() == 0.0
    assert ds[3].gate == "none" and ds[3].layer_name is None and ds[3].kernel is None
    assert ds[4].distribution.tolist() == [1.0]
    for d, g in zip(ds, graphs):
        assert isinstance(d, Decision)
        assert d.propensity == d.distribution[d.action_index] == 1.0
        assert len(d.distribution) == num_actions(g.num_nodes, K)


def test_decide_batch_with_gnn_respects_masks_and_logs_propensity() -> None:
    torch.manual_seed(0)
    policy = TamiyoPolicyGNN().eval()
    rng = np.random.default_rng(1)
    g = graph([0.5, 0.4, 0.3, 0.2], dormant=[0, None, 1, 0])
    cfg = GateConfig(confidence_threshold=0.0, epsilon=0.1)  # let the policy's adapt mass through
    states = [GateState(last_adapted_epoch={"L3": 5})] * 200
    ds = decide_batch([g] * 200, policy, states, cfg, rng)
    illegal = ~legal_mask(g, K, {"L3"})
    assert illegal.sum() == 6
    for d in ds:
        assert d.distribution[illegal].sum() == 0.0
        assert d.distribution.sum() == pytest.approx(1.0, abs=1e-12)
        assert d.propensity == d.distribution[d.action_index] > 0.0
        assert d.layer_name in (None, "L0", "L2") and d.value == pytest.approx(ds[0].value)
        assert d.gate == "cooldown"
    assert len({d.action_index for d in ds}) > 3  # it really samples
    np.testing.assert_allclose(ds[0].distribution, ds[-1].distribution)


def test_decide_batch_confidence_gate_with_gnn() -> None:
    torch.manual_seed(0)
    policy = TamiyoPolicyGNN().eval()
    g = graph([0.2, 0.3])
    ds = decide_batch([g], policy, [GateState()], GateConfig(confidence_threshold=1.01, epsilon=0.0),
                      np.random.default_rng(0))
    assert ds[0].gate == "confidence" and ds[0].action == "WAIT" and ds[0].propensity == 1.0


def test_decide_batch_checks_inputs() -> None:
    g = graph([0.2])
    with pytest.raises(ValueError, match="kernels"):
        decide_batch([g], ThresholdHeuristic(), [GateState()], GateConfig(), np.random.default_rng(0), ("a", "b"))
    with pytest.raises(ValueError, match="gate states"):
        decide_batch([g], ThresholdHeuristic(), [], GateConfig(), np.random.default_rng(0))
    assert decide_batch([], ThresholdHeuristic(), [], GateConfig(), np.random.default_rng(0)) == []
