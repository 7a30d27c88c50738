"""Proof that it learns (issue: learning loop): learned vs behaviour vs heuristic vs never adapting
on fresh simulated episodes, through the real training job (``training.proof``), and the same four
on real digits-host runs (``return_*_real_host``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tamiyo.bench.harness import Results, Target, progress
from tamiyo.config import Settings

POLICIES = ("learned", "behaviour", "heuristic", "never_adapt")


def bench_proof(results: Results, seed: int = 0) -> None:
    from training.proof import ProofConfig, learning_proof

    # mlflow.set_tracking_uri() exports MLFLOW_TRACKING_URI: restore it, or later benchmarks would
    # write to this (deleted) temporary store.
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    with tempfile.TemporaryDirectory(prefix="tamiyo-proof-") as tmp:
        settings = Settings.from_env(data_dir=Path(tmp), mlflow_tracking_uri=f"sqlite:///{tmp}/mlflow/mlflow.db")
        progress("learning proof: collect behaviour data, train (lcbq), evaluate on fresh episodes")
        try:
            out = learning_proof(settings, ProofConfig(seed=seed))
        finally:
            if saved is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = saved
    targets = {"learned": Target(">=", 1.0, ref="return_heuristic")}
    for name in POLICIES:
        m = out["measured"][name]
        results.add(f"return_{name}", [m["value"]], "val-loss reduction per episode", targets.get(name),
                    ci_low=m["ci_low"], ci_high=m["ci_high"], episodes=m["episodes"],
                    mean_decision_reward=m["mean_decision_reward"],
                    commands_applied_per_episode=m["commands_applied_per_episode"])
    for name, m in out["measured_real_hosts"].items():  # informative: no target (see training.proof)
        results.add(f"return_{name}_real_host", [m["value"]], "val-loss reduction per run", None,
                    ci_low=m["ci_low"], ci_high=m["ci_high"], episodes=m["episodes"],
                    mean_decision_reward=m["mean_decision_reward"],
                    commands_applied_per_episode=m["commands_applied_per_episode"],
                    host="hosts.digits_model: the KasminaMLP + digits data of `tamiyo host`, in-process")
    ope = out["ope_estimate_learned"]
    results.add("ope_estimate_learned", [ope["value"]], "mean decision reward", None, ci_low=ope["ci_low"],
                ci_high=ope["ci_high"], estimator=ope["estimator"],
                measured_mean_decision_reward=ope["measured_mean_decision_reward"])
    results.note(f"learning proof: {out['transitions']} behaviour transitions; challenger v{out['version']} "
                 f"{'promoted' if out['promoted'] else 'not promoted'} ({out['gate_reason']}); the learned policy "
                 f"must beat behaviour and heuristic (CIs in results.json); OPE "
                 f"{ope['value']:.3f} vs measured {ope['measured_mean_decision_reward']:.3f} per decision")
