"""Proof that the loop learns: on the simulated fleet with fixed seeds, collect behaviour data,
train through the real job (MLflow included), and compare policies on fresh episodes.

Policies compared: the learned one, the behaviour policy that collected the data (heuristic with
exploration), the design notes' threshold heuristic, and never adapting. Returns are
``first val loss - final val loss - parameter_cost * parameters added`` per episode (run).
The same four are then run on the real host's network and digits data (``hosts.digits_model``,
in-process, same decision code), with the policy learned from the simulated fleet.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from models.decide import GateConfig
from models.heuristic import ThresholdHeuristic
from tamiyo.config import Settings
from training.episodes import RewardConfig, group_episodes, transitions
from training.job import TrainConfig, train_on_transitions
from training.rollout import NeverAdapt, rollout, summarise_returns

log = logging.getLogger(__name__)


@dataclass
class ProofConfig:
    # 300 models x 2 runs x 20 epochs = 12k decisions (~70 % for training): the lcbq critics need
    # the exploration to cover healthy layers (adapting one is the costly mistake) and every kernel.
    collect_models: int = 300
    collect_runs: int = 2
    behaviour_epsilon: float = 0.5
    eval_models: int = 100
    eval_runs: int = 1
    epochs_per_run: int = 20
    seed: int = 0
    eval_seed: int = 10_000  # fresh episodes: seeds never used for collection
    # The same comparison on the real host's network and data (hosts.digits_model): every policy
    # trains the same seeded networks, so the runs are paired. 0 models skips it.
    real_models: int = 16
    real_epochs_per_run: int = 12
    train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(learner="lcbq", progress=False, promote=True))


def _measure(policy: Any, version: str, cfg: ProofConfig, gate: GateConfig, reward: RewardConfig,
             real: bool = False) -> dict[str, Any]:
    if real:
        records, episodes = rollout(policy, version, cfg.real_models, 1, cfg.eval_seed, gate,
                                    epochs_per_run=cfg.real_epochs_per_run, make_model=_digits_model)
    else:
        records, episodes = rollout(policy, version, cfg.eval_models, cfg.eval_runs, cfg.eval_seed, gate,
                                    epochs_per_run=cfg.epochs_per_run)
    steps = transitions(group_episodes(records), reward, records[-1].timestamp_ms)
    summary = summarise_returns(episodes, reward, seed=cfg.seed).as_dict()
    summary["mean_decision_reward"] = float(np.mean([t.reward for t in steps]))
    summary["commands_applied_per_episode"] = sum(
        r.name == "CommandOutcome" and r.value["status"] == "APPLIED" for r in records) / len(episodes)
    return summary


def _compare(learned: Any, cfg: ProofConfig, serving: GateConfig, behaviour_gate: GateConfig, reward: RewardConfig,
             real: bool) -> dict[str, dict[str, Any]]:
    heuristic = ThresholdHeuristic()
    return {
        "learned": _measure(learned, learned.version, cfg, serving, reward, real),
        "behaviour": _measure(heuristic, "behaviour", cfg, behaviour_gate, reward, real),
        "heuristic": _measure(heuristic, heuristic.version, cfg, serving, reward, real),
        "never_adapt": _measure(NeverAdapt(), NeverAdapt.version, cfg, serving, reward, real),
    }


def _digits_model(seed: int, index: int, epochs_per_run: int, clock: Callable[[], float]) -> Any:
    from hosts.digits_model import DigitsModel

    return DigitsModel(f"digits-{seed}-{index:03d}", seed=seed + index, epochs_per_run=epochs_per_run, clock=clock)


def learning_proof(settings: Settings, cfg: ProofConfig) -> dict[str, Any]:
    """Run the comparison; returns figures keyed like bench/results.json metrics."""
    reward = cfg.train.reward_config()
    serving = GateConfig(confidence_threshold=settings.confidence_threshold, cooldown_epochs=settings.cooldown_epochs,
                         max_adaptations_per_epoch=settings.max_adaptations_per_epoch, epsilon=0.0)
    behaviour_gate = dataclasses.replace(serving, epsilon=cfg.behaviour_epsilon)
    heuristic = ThresholdHeuristic()
    t0 = time.perf_counter()
    records, _ = rollout(heuristic, f"{heuristic.version}+eps{cfg.behaviour_epsilon}", cfg.collect_models,
                         cfg.collect_runs, cfg.seed, behaviour_gate, epochs_per_run=cfg.epochs_per_run)
    steps = transitions(group_episodes(records), reward, records[-1].timestamp_ms)
    collected = time.perf_counter() - t0
    # Evaluate the challenger as it will be served: without exploration.
    train_settings = dataclasses.replace(settings, exploration_epsilon=0.0)
    result = train_on_transitions(train_settings, cfg.train, steps, {"source": "training.proof rollout",
                                                                     "transitions": len(steps)})
    from training.registry import PolicyRegistry

    learned = PolicyRegistry(settings.tracking_uri, cfg.train.registered_model or settings.registered_model)
    policy = learned.load(result.version)
    measured = _compare(policy, cfg, serving, behaviour_gate, reward, real=False)
    measured_real = _compare(policy, cfg, serving, behaviour_gate, reward, real=True) if cfg.real_models else {}
    estimator = cfg.train.gate_estimator
    ope = result.ope["challenger"].estimates[estimator]
    return {
        "measured": measured,
        "measured_real_hosts": measured_real,
        "ope_estimate_learned": {"value": ope.value, "ci_low": ope.low, "ci_high": ope.high, "estimator": estimator,
                                 "measured_mean_decision_reward": measured["learned"]["mean_decision_reward"]},
        "transitions": len(steps),
        "collect_seconds": collected,
        "train_seconds": result.seconds,
        "version": result.version,
        "promoted": result.promoted,
        "gate_reason": result.reason,
    }
