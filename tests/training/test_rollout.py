"""Rollouts through the production decision path on simulated models."""

from __future__ import annotations

from models.decide import GateConfig
from models.heuristic import ThresholdHeuristic
from training.episodes import RewardConfig, group_episodes, transitions
from training.rollout import NeverAdapt, rollout, summarise_returns


def test_never_adapt_sends_no_command_and_heuristic_does() -> None:
    gate = GateConfig(epsilon=0.0)
    never, never_eps = rollout(NeverAdapt(), NeverAdapt.version, models=4, runs=1, seed=3, gate=gate,
                               epochs_per_run=8)
    assert not [r for r in never if r.name == "AdaptationCommand"]
    decisions = [r for r in never if r.name == "DecisionRecord"]
    assert len(decisions) == 4 * 8 and all(d.value["action"] == "WAIT" for d in decisions)
    heuristic = ThresholdHeuristic()
    records, episodes = rollout(heuristic, heuristic.version, models=4, runs=1, seed=3, gate=gate, epochs_per_run=8)
    applied = [r for r in records if r.name == "CommandOutcome" and r.value["status"] == "APPLIED"]
    assert applied, "the heuristic adapts some sick layer in 4 models x 8 epochs"
    assert sum(e.parameters_added for e in episodes) == sum(r.value["parameter_delta"] for r in applied)
    # Same seed, same models: never adapting leaves every episode with no parameters added.
    assert [e.model_id for e in never_eps] == [e.model_id for e in episodes]
    assert all(e.parameters_added == 0 for e in never_eps)


def test_rollout_records_join_into_transitions_and_returns_summarise() -> None:
    reward = RewardConfig()
    records, episodes = rollout(ThresholdHeuristic(), "h", models=3, runs=2, seed=1, gate=GateConfig(epsilon=0.5),
                                epochs_per_run=6)
    steps = transitions(group_episodes(records), reward, records[-1].timestamp_ms)
    assert len(episodes) == 3 * 2
    assert len(steps) == 3 * 2 * 6  # every decision has a reward (runs are complete)
    assert all(0 < s.propensity <= 1 for s in steps)
    summary = summarise_returns(episodes, reward)
    assert summary.low <= summary.mean <= summary.high and summary.episodes == 6


def test_learning_proof_end_to_end_on_a_small_fleet(tmp_path) -> None:
    """The proof harness runs collect → train (real job, real MLflow) → measure; small and fast here,
    so only its shape and honesty are checked (``make bench`` runs the real size)."""
    from tamiyo.config import Settings
    from training.job import TrainConfig
    from training.proof import ProofConfig, learning_proof

    settings = Settings.from_env(data_dir=tmp_path, mlflow_tracking_uri=f"sqlite:///{tmp_path}/mlflow/mlflow.db")
    cfg = ProofConfig(collect_models=8, collect_runs=1, eval_models=4, eval_runs=1, epochs_per_run=6,
                      train=TrainConfig(progress=False, learner="lcbq", epochs=3, q_epochs=3, value_epochs=2,
                                        lcbq_members=2, bootstrap_samples=50, gate_min_ess=1.0))
    out = learning_proof(settings, cfg)
    assert set(out["measured"]) == {"learned", "behaviour", "heuristic", "never_adapt"}
    for summary in out["measured"].values():
        assert summary["ci_low"] <= summary["value"] <= summary["ci_high"] and summary["episodes"] == 4
    assert out["transitions"] == 8 * 6 and out["version"] == "1" and out["gate_reason"]
    ope = out["ope_estimate_learned"]
    assert ope["ci_low"] <= ope["value"] <= ope["ci_high"]
