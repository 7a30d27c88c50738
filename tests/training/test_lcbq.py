"""The lcbq learner (pessimistic fitted-Q policy extraction) and the critic options it relies on, on
the synthetic world (known best action)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.checkpoint import load_policy, save_policy
from models.policy import collate
from training.dataset import (
    TransitionDataset,
    expert_actions,
    synthetic_transitions,
)
from training.evaluation import action_probabilities, ope_of
from tests.training.synthetic import true_value
from training.learners import LCBQConfig, fit, make_config
from training.learners.lcbq import episode_bootstrap, lcb_advantages
from training.qfit import EpochBaseline, QConfig, fit_q, row_epochs


pytestmark = pytest.mark.usefixtures("one_thread")


FAST = LCBQConfig(epochs=12, distill_epochs=12, members=3, seed=0)


def test_lcbq_learns_the_best_action_and_brings_its_critic(uniform_split, tmp_path) -> None:
    train, held = uniform_split
    result = fit("lcbq", train, FAST)
    assert set(result.history) >= {"q/mse", "distill/mse", "distill/value_mse", "policy/entropy"}
    assert result.history["q/mse"][-1] < result.history["q/mse"][0]
    assert result.history["distill/mse"][-1] < result.history["distill/mse"][0]
    assert result.q_model is not None and len(result.q_model.nets) == 3

    probs = action_probabilities(result.policy, held)
    value, behaviour = true_value(probs, held), true_value(held.behaviour, held)
    assert value > behaviour + 0.6 and value > 0.5, (value, behaviour)
    assert np.mean([np.argmax(p) == b for p, b in zip(probs, expert_actions(held))]) > 0.6
    # Near-greedy: the served distribution puts almost all its mass on one action.
    assert np.mean([p.max() for p in probs]) > 0.9

    # The critic it returns is a usable DR model (same rows, same shapes as fit_q's).
    report = ope_of(result.policy, held, result.q_model, bootstrap=100)
    assert report.estimates["dr"].low <= value + 0.1 and report.estimates["dr"].value > behaviour

    # The served network is a plain TamiyoPolicyGNN checkpoint (no GCN layers by default).
    save_policy(result.policy, tmp_path)
    loaded = load_policy(tmp_path)
    assert loaded.config.num_gnn_layers == 0
    batch = collate(held.graphs[:16])
    a, _ = loaded.distributions(batch, held.masks[:16])
    b, _ = result.policy.distributions(batch, held.masks[:16])
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


def test_lcbq_is_seeded() -> None:
    data = TransitionDataset.from_transitions(synthetic_transitions(episodes=6, steps=5, seed=1))
    cfg = LCBQConfig(epochs=2, distill_epochs=2, members=2, seed=3)
    a, b = fit("lcbq", data, cfg), fit("lcbq", data, cfg)
    c = fit("lcbq", data, LCBQConfig(epochs=2, distill_epochs=2, members=2, seed=4))
    assert a.history == b.history and a.history != c.history
    for (name, x), y in zip(a.policy.state_dict().items(), b.policy.state_dict().values()):
        assert torch.equal(x, y), name


def test_lcb_is_mean_minus_kappa_sd_of_advantages_over_wait() -> None:
    q = np.array([[1.0, 1.5, 0.5], [2.0, 2.4, 2.5], [0.0, 0.6, 1.3]])  # 3 members, WAIT + 2 actions
    adv = q - q[:, :1]
    (lcb,) = lcb_advantages([q], kappa=2.0)
    np.testing.assert_allclose(lcb, adv.mean(axis=0) - 2.0 * adv.std(axis=0, ddof=1))
    assert lcb[0] == 0.0
    # Both actions gain ~0.45 on average, but the members disagree about action 2: the bound
    # keeps the agreed-on action and puts WAIT above the disputed one.
    assert lcb[1] > 0 > lcb[2]
    (single,) = lcb_advantages([q[:1]], kappa=5.0)  # one member: no spread, the plain advantage
    np.testing.assert_allclose(single, adv[0])


def test_episode_bootstrap_keeps_runs_together() -> None:
    episodes = np.repeat(np.arange(50), 4)
    w = episode_bootstrap(episodes, np.random.default_rng(0))
    assert w.sum() == len(episodes) and (w >= 0).all()
    assert all(len(set(w[episodes == e])) == 1 for e in range(50))
    assert (w == 0).any() and (w > 1).any()


def test_epoch_baseline_and_dueling_critic(uniform_split) -> None:
    train, held = uniform_split
    b = EpochBaseline(np.array([0, 0, 1, 5, 200]), np.array([1.0, 3.0, -1.0, 0.0, 4.0]), cap=100, prior=0.0)
    assert b(np.array([0, 1, 5, 150, 100])).tolist() == [2.0, -1.0, 0.0, 4.0, 4.0]
    shrunk = EpochBaseline(np.array([0, 0, 1]), np.array([1.0, 3.0, -1.0]), prior=1.0)
    assert shrunk(np.array([0]))[0] == pytest.approx((4.0 + 1.0) / 3.0)  # towards the mean, 1.0

    q, history = fit_q(train, QConfig(epochs=10, seed=0, dueling=True, epoch_baseline=True, num_gnn_layers=0))
    assert history["q/mse"][-1] < history["q/mse"][0]
    rows = q.q_values(held)
    # Q is read back with b(epoch) added: on the logged actions it tracks the rewards.
    assert np.corrcoef(q.q_taken(held, rows), held.rewards)[0, 1] > 0.8
    assert np.allclose(q.baseline.of(held), q.baseline(row_epochs(held)))


def test_train_config_routes_lcbq_settings() -> None:
    from training.job import TrainConfig

    cfg = TrainConfig(learner="lcbq", epochs=7, lcbq_members=5, lcbq_kappa=2.0, lcbq_temperature=0.01)
    lc = cfg.learner_config()
    assert isinstance(lc, LCBQConfig)
    assert (lc.epochs, lc.distill_epochs, lc.members, lc.kappa, lc.temperature) == (7, 7, 5, 2.0, 0.01)
    assert make_config("lcbq", beta=3.0).members == LCBQConfig().members  # AWR-only keys are ignored
    for bad in ({"lcbq_members": 0}, {"lcbq_temperature": 0.0}, {"lcbq_kappa": -1.0}):
        with pytest.raises(ValueError):
            TrainConfig(**bad).validate()
