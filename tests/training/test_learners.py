"""Learners, fitted Q and off-policy evaluation on the synthetic world (known best action)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.decide import GateConfig as ServingGate
from models.heuristic import ThresholdHeuristic
from models.policy import collate
from training.dataset import (
    TransitionDataset,
    expert_actions,
    split_by_episode,
    synthetic_mean_rewards,
    synthetic_transitions,
)
from training.evaluation import action_probabilities, ope_of
from tests.training.synthetic import true_value
from training.learners import AWRConfig, BCConfig, fit, make_config
from training.learners.awr import advantage_weights
from training.qfit import QConfig, fit_q


pytestmark = pytest.mark.usefixtures("one_thread")


def test_bc_reduces_its_loss_and_imitates_a_deterministic_logged_policy() -> None:
    data = TransitionDataset.from_transitions(
        synthetic_transitions(episodes=60, steps=10, behaviour="expert", epsilon=0.0, seed=5))
    assert np.all(data.propensities == 1.0)
    train, held = split_by_episode(data, 0.3, seed=0)
    result = fit("bc", train, BCConfig(epochs=15, lr=3e-3, seed=0))
    nll = result.history["policy/nll"]
    assert len(nll) == 15 and nll[-1] < 0.3 * nll[0]
    assert result.history["policy/accuracy"][-1] > 0.9
    probs, _ = result.policy.distributions(collate(held.graphs), held.masks)
    agreement = np.mean([np.argmax(p) == a for p, a in zip(probs, held.actions)])
    assert agreement > 0.85, agreement  # on episodes it never saw


def test_awr_prefers_the_higher_reward_action_under_a_uniform_behaviour(uniform_split) -> None:
    train, held = uniform_split
    awr = fit("awr", train, AWRConfig(epochs=15, value_epochs=10, seed=0))
    bc = fit("bc", train, BCConfig(epochs=15, seed=0))
    assert awr.history["policy/loss"][-1] < awr.history["policy/loss"][0]
    assert awr.history["value/loss"][-1] < awr.history["value/loss"][0]

    behaviour = true_value(held.behaviour, held)
    awr_probs = action_probabilities(awr.policy, held)
    bc_value = true_value(action_probabilities(bc.policy, held), held)
    awr_value = true_value(awr_probs, held)
    assert awr_value > behaviour + 0.4 and awr_value > bc_value + 0.4, (awr_value, bc_value, behaviour)
    assert abs(bc_value - behaviour) < 0.15  # cloning uniform logs stays near uniform
    best = expert_actions(held)
    assert np.mean([np.argmax(p) == b for p, b in zip(awr_probs, best)]) > 0.6


def test_learners_are_seeded() -> None:
    data = TransitionDataset.from_transitions(synthetic_transitions(episodes=6, steps=5, seed=1))
    a = fit("awr", data, AWRConfig(epochs=2, value_epochs=2, seed=3))
    b = fit("awr", data, AWRConfig(epochs=2, value_epochs=2, seed=3))
    c = fit("awr", data, AWRConfig(epochs=2, value_epochs=2, seed=4))
    assert a.history == b.history and a.history != c.history
    for (name, x), y in zip(a.policy.state_dict().items(), b.policy.state_dict().values()):
        assert torch.equal(x, y), name


def test_make_config_routes_shared_fields_and_rejects_unknown_learners() -> None:
    cfg = make_config("bc", epochs=3, beta=9.0, lr=0.01)
    assert isinstance(cfg, BCConfig) and cfg.epochs == 3 and cfg.lr == 0.01
    assert make_config("awr", beta=9.0).beta == 9.0
    with pytest.raises(ValueError, match="unknown learner"):
        make_config("ppo")


def test_advantage_weights_are_capped_and_normalised() -> None:
    rewards = np.array([0.0, 0.0, 10.0, -10.0])
    w, scale = advantage_weights(rewards, np.zeros(4), beta=0.1, max_weight=5.0)
    assert w.mean() == pytest.approx(1.0) and scale == pytest.approx(rewards.std())
    assert w.max() / w[0] == pytest.approx(5.0)  # exp(huge) capped, no overflow
    assert w[3] < w[0]


def test_fitted_q_learns_the_reward_of_each_action(uniform_split) -> None:
    train, held = uniform_split
    q, history = fit_q(train, QConfig(epochs=15, seed=0))
    assert history["q/mse"][-1] < 0.5 * history["q/mse"][0]
    q_rows = q.q_values(held)
    table = synthetic_mean_rewards(held)
    legal_q = np.concatenate([row[m] for row, m in zip(q_rows, held.masks)])
    legal_true = np.concatenate([row[m] for row, m in zip(table, held.masks)])
    assert np.corrcoef(legal_q, legal_true)[0, 1] > 0.8
    one_hot = [np.eye(len(row))[a] for row, a in zip(q_rows, held.actions)]
    np.testing.assert_allclose(q.v_pi(held, one_hot, q_rows), q.q_taken(held, q_rows))


def test_ope_of_behaviour_gnn_and_heuristic_on_the_same_rows(uniform_split) -> None:
    train, held = uniform_split
    q, _ = fit_q(train, QConfig(epochs=10, seed=0))
    behaviour = ope_of(None, held, q, bootstrap=200)
    assert behaviour.effective_sample_size == pytest.approx(len(held)) and behaviour.max_weight == 1.0
    assert behaviour.estimates["ips"].value == pytest.approx(held.rewards.mean())

    heuristic = ThresholdHeuristic(health_threshold=0.5, kernel=1)  # the synthetic world's expert
    report = ope_of(heuristic, held, q, bootstrap=200)
    truth = true_value(action_probabilities(heuristic, held), held)
    assert truth > 0.5
    for name in ("snips", "dr"):
        e = report.estimates[name]
        assert e.low <= truth <= e.high, (name, e, truth)
    assert report.estimates["dr"].high - report.estimates["dr"].low < \
        report.estimates["ips"].high - report.estimates["ips"].low  # the fitted Q narrows the interval


def test_serving_gate_is_applied_to_the_scored_distribution(uniform_split) -> None:
    _, held = uniform_split
    heuristic = ThresholdHeuristic(health_threshold=0.5, kernel=1)
    explore = action_probabilities(heuristic, held, ServingGate(confidence_threshold=0.0, epsilon=1.0))
    for p, m in zip(explore[:20], held.masks[:20]):
        np.testing.assert_allclose(p, m / m.sum())
    closed = action_probabilities(heuristic, held, ServingGate(confidence_threshold=1.01, epsilon=0.0))
    assert all(p[0] == 1.0 for p in closed)  # the confidence gate turns everything into WAIT


def test_a_policy_the_logged_behaviour_never_tried_is_reported_and_refused() -> None:
    """Data logged without exploration cannot score a policy that acts differently: its mass on
    unlogged actions is reported and the gate refuses it (before, the target policy was scored on
    the logged actions only and such a policy could pass with a full effective sample size)."""
    from training.gate import GateConfig, judge

    deterministic = TransitionDataset.from_transitions(
        synthetic_transitions(episodes=30, steps=6, behaviour="expert", epsilon=0.0, seed=8))
    other_kernel = ThresholdHeuristic(health_threshold=0.5, kernel=0)  # the expert adapts with kernel 1
    pi = action_probabilities(other_kernel, deterministic)
    differs = np.mean([int(np.argmax(p)) != a for p, a in zip(pi, deterministic.actions.tolist())])
    assert differs > 0.2
    report = ope_of(other_kernel, deterministic, None, bootstrap=50)
    assert report.unsupported_mass == pytest.approx(differs)
    baseline = ope_of(None, deterministic, None, bootstrap=50)
    assert baseline.unsupported_mass == 0.0
    verdict = judge(report, baseline, GateConfig(estimator="snips", min_effective_sample_size=1.0, margin=-10.0))
    assert not verdict.promote and "never took" in verdict.reason

    explored = TransitionDataset.from_transitions(
        synthetic_transitions(episodes=30, steps=6, behaviour="expert", epsilon=0.3, seed=8))
    assert ope_of(other_kernel, explored, None, bootstrap=50).unsupported_mass == 0.0
