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
                      real_models=2, real_epochs_per_run=3,
                      train=TrainConfig(progress=False, learner="lcbq", epochs=3, q_epochs=3, value_epochs=2,
                                        lcbq_members=2, bootstrap_samples=50, gate_min_ess=1.0))
    out = learning_proof(settings, cfg)
    assert set(out["measured"]) == {"learned", "behaviour", "heuristic", "never_adapt"}
    for summary in out["measured"].values():
        assert summary["ci_low"] <= summary["value"] <= summary["ci_high"] and summary["episodes"] == 4
    assert set(out["measured_real_hosts"]) == set(out["measured"])
    for summary in out["measured_real_hosts"].values():
        assert summary["ci_low"] <= summary["value"] <= summary["ci_high"] and summary["episodes"] == 2
    assert out["measured_real_hosts"]["never_adapt"]["commands_applied_per_episode"] == 0
    assert out["measured"]["behaviour"]["commands_applied_per_episode"] > 0  # epsilon 0.5 explores
    assert out["transitions"] == 8 * 6 and out["version"] == "1" and out["gate_reason"]
    ope = out["ope_estimate_learned"]
    assert ope["ci_low"] <= ope["value"] <= ope["ci_high"]


def test_real_digits_hosts_roll_out_through_the_same_decision_path() -> None:
    """Real KasminaMLPs on digits: the heuristic's commands are applied to the real network (its
    parameter count grows by what the outcomes report) and never adapting adds nothing."""
    from hosts.digits_model import DigitsModel

    def digits(seed, index, epochs, clock):  # type: ignore[no-untyped-def]
        return DigitsModel(f"d{index}", seed=seed + index, epochs_per_run=epochs, clock=clock, hidden=(32, 32))

    gate = GateConfig(epsilon=0.5, confidence_threshold=0.0)
    records, episodes = rollout(ThresholdHeuristic(), "h", models=2, runs=1, seed=5, gate=gate, epochs_per_run=4,
                                make_model=digits)
    outcomes = [r.value for r in records if r.name == "EpochOutcome"]
    assert len(outcomes) == 2 * 4 and [o["final"] for o in outcomes[-2:]] == [True, True]
    assert all(0.0 < o["val_loss"] < 5.0 and 0.0 <= o["val_accuracy"] <= 1.0 for o in outcomes)
    signals_layers = {len(r.value["layers"]) for r in records if r.name == "ModelTopology"}
    assert signals_layers == {3}  # two hidden KasminaLayers + the output layer
    applied = [r.value for r in records if r.name == "CommandOutcome" and r.value["status"] == "APPLIED"]
    assert applied, "with epsilon 0.5 some GERMINATE over 8 decisions is applied"
    for model_id in {a["model_id"] for a in applied}:
        counts = [o["parameter_count"] for o in outcomes if o["model_id"] == model_id]
        added = sum(a["parameter_delta"] for a in applied if a["model_id"] == model_id)
        assert counts[-1] - counts[0] <= added and counts[-1] > counts[0]
    assert sum(e.parameters_added for e in episodes) == sum(a["parameter_delta"] for a in applied)
    never, never_eps = rollout(NeverAdapt(), NeverAdapt.version, models=2, runs=1, seed=5,
                               gate=GateConfig(epsilon=0.0), epochs_per_run=4, make_model=digits)
    assert all(e.parameters_added == 0 for e in never_eps)
    # Same seeds: the first epoch (before any command) trains identically under both policies.
    assert [e.first_val_loss for e in never_eps] == [e.first_val_loss for e in episodes]
