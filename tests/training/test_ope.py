"""Each estimator on a synthetic bandit with a known value lands inside its interval; the gate."""

from __future__ import annotations

import numpy as np
import pytest

from training.gate import GateConfig, judge
from training.ope import evaluate, effective_sample_size, importance_weights

MEANS = np.array([0.1, 0.5, 0.9])  # expected reward of each of 3 arms


def logged_bandit(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A uniform behaviour policy over 3 arms; Bernoulli rewards with the means above."""
    rng = np.random.default_rng(seed)
    behaviour = np.full(3, 1 / 3)
    actions = rng.choice(3, size=n, p=behaviour)
    rewards = (rng.random(n) < MEANS[actions]).astype(float)
    return actions, rewards, behaviour[actions], behaviour


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_estimators_cover_the_true_value_of_a_target_policy(seed: int) -> None:
    target = np.array([0.1, 0.2, 0.7])
    true_value = float(target @ MEANS)
    actions, rewards, mu, _ = logged_bandit(3000, seed)
    q_hat = np.array([rewards[actions == a].mean() for a in range(3)])  # a fitted Q
    report = evaluate(rewards, target[actions], mu, q=q_hat[actions], v=np.full(len(actions), target @ q_hat),
                      bootstrap=300, seed=seed)
    for name in ("ips", "snips", "dr"):
        estimate = report.estimates[name]
        assert estimate.low <= true_value <= estimate.high, (name, estimate, true_value)
        assert estimate.low < estimate.value < estimate.high
    assert 0 < report.effective_sample_size <= len(actions)
    assert report.max_weight == pytest.approx(0.7 * 3)


def test_weights_and_ess() -> None:
    w = importance_weights(np.array([0.5, 0.5]), np.array([0.25, 0.5]))
    assert list(w) == [2.0, 1.0]
    assert effective_sample_size(np.ones(10)) == pytest.approx(10)
    assert effective_sample_size(np.array([10.0, 0.0, 0.0])) == pytest.approx(1)
    with pytest.raises(ValueError, match="propensity is 0"):
        importance_weights(np.array([0.5]), np.array([0.0]))


def test_gate_promotes_a_better_policy_and_refuses_a_worse_one() -> None:
    actions, rewards, mu, behaviour = logged_bandit(4000, 7)
    champion = evaluate(rewards, behaviour[actions], mu, bootstrap=200)
    better = evaluate(rewards, np.array([0.05, 0.15, 0.8])[actions], mu, bootstrap=200)
    worse = evaluate(rewards, np.array([0.8, 0.15, 0.05])[actions], mu, bootstrap=200)
    cfg = GateConfig(estimator="snips", min_effective_sample_size=100)
    assert judge(better, champion, cfg).promote
    verdict = judge(worse, champion, cfg)
    assert not verdict.promote and "does not beat" in verdict.reason
    strict = GateConfig(estimator="snips", min_effective_sample_size=10_000)
    refused = judge(better, champion, strict)
    assert not refused.promote and "effective sample size" in refused.reason


def test_gate_refuses_a_challenger_whose_estimates_are_not_finite() -> None:
    """NaN compares False with everything: a NaN estimate (a diverged Q or policy) must not promote."""
    import dataclasses

    actions, rewards, mu, behaviour = logged_bandit(2000, 3)
    champion = evaluate(rewards, behaviour[actions], mu, bootstrap=100)
    better = evaluate(rewards, np.array([0.05, 0.15, 0.8])[actions], mu, bootstrap=100)
    cfg = GateConfig(estimator="snips", min_effective_sample_size=100)
    assert judge(better, champion, cfg).promote
    nan_low = dataclasses.replace(better, estimates={**better.estimates, "snips": dataclasses.replace(
        better.estimates["snips"], low=float("nan"))})
    nan_champion = dataclasses.replace(champion, estimates={**champion.estimates, "snips": dataclasses.replace(
        champion.estimates["snips"], value=float("nan"))})
    nan_ess = dataclasses.replace(better, effective_sample_size=float("nan"))
    for challenger, baseline, what in ((nan_low, champion, "challenger lower bound"),
                                       (better, nan_champion, "champion value"),
                                       (nan_ess, champion, "effective sample size")):
        verdict = judge(challenger, baseline, cfg)
        assert not verdict.promote and "not finite" in verdict.reason and what in verdict.reason
