"""Run policies on simulated models in-process, through the production decision path.

Used to collect behaviour data quickly and to measure policies on fresh episodes (``make bench``).
Each epoch mirrors the worker: health signals are folded into window aggregates
(``models.graph``), ``streams.decisions.prepare``/``decide`` build the graph, apply the gates and
sample, and the simulated host applies the command. The output is the same records the
experience topic would hold, so rewards come from the same join (``training.episodes``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from hosts.simulation import SimulatedModel
from models.decide import GateConfig
from models.graph import update_layer_aggregate
from streams.decisions import decide, prepare
from training.episodes import RewardConfig
from training.replay import ExperienceRecord

EPOCH_MS = 1000


class NeverAdapt:
    """A policy that always waits (the do-nothing baseline)."""

    version = "never-adapt"

    def distributions(self, batch: Any, masks: Sequence[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
        out = []
        for mask in masks:
            p = np.zeros(len(mask))
            p[0] = 1.0
            out.append(p)
        return out, np.zeros(len(masks))


@dataclass
class EpisodeResult:
    model_id: str
    run_id: str
    first_val_loss: float
    final_val_loss: float
    parameters_added: int

    def episode_return(self, parameter_cost: float) -> float:
        """What the controller is for: the loss it removed over the run, minus what it added."""
        return self.first_val_loss - self.final_val_loss - parameter_cost * self.parameters_added


class _Clock:
    def __init__(self) -> None:
        self.ms = 1_700_000_000_000

    def __call__(self) -> float:
        return self.ms / 1000.0


ModelFactory = Callable[[int, int, int, Callable[[], float]], Any]  # (seed, index, epochs_per_run, clock)


def simulated(seed: int, index: int, epochs_per_run: int, clock: Callable[[], float]) -> SimulatedModel:
    return SimulatedModel(f"sim-{seed}-{index:04d}", np.random.default_rng([seed, index]),
                          epochs_per_run=epochs_per_run, clock=clock)


def rollout(policy: Any, version: str, models: int, runs: int, seed: int, gate: GateConfig,
            epochs_per_run: int = 20, window_epochs: int = 10, progress: bool = False,
            make_model: ModelFactory = simulated) -> tuple[list[ExperienceRecord], list[EpisodeResult]]:
    """``runs`` complete runs of each of ``models`` models (simulated unless ``make_model`` says
    otherwise, e.g. ``hosts.digits_model.DigitsModel``) under ``policy``."""
    clock = _Clock()
    sims = [make_model(seed, i, epochs_per_run, clock) for i in range(models)]
    records: list[ExperienceRecord] = []
    episodes: dict[tuple[str, str], EpisodeResult] = {}
    state: dict[str, dict[str, Any]] = {s.model_id: {"windows": [], "gate": None, "topology": None, "runs": 0}
                                        for s in sims}
    offset = 0

    def emit(name: str, value: dict) -> None:
        nonlocal offset
        records.append(ExperienceRecord(name, value, 0, offset, clock.ms))
        offset += 1

    total_epochs = runs * epochs_per_run
    for epoch_index in tqdm(range(total_epochs), desc=f"rollout {version}", disable=not progress, leave=False):
        due, sims_due = [], []
        for sim in sims:
            st = state[sim.model_id]
            if st["topology"] is None or sim.run_over or sim.run_id != st["topology"]["run_id"]:
                st["topology"] = sim.topology()
                st["windows"] = [{"run_id": st["topology"]["run_id"], "layers": {}}]
                emit("ModelTopology", st["topology"])
            if epoch_index % window_epochs == 0:
                st["windows"] = (st["windows"] + [{"run_id": st["topology"]["run_id"], "layers": {}}])[-2:]
            current = st["windows"][-1]["layers"]
            for _ in range(sim.signals_per_epoch):
                for signal in sim.health_signals():
                    current[signal["layer_name"]] = update_layer_aggregate(current.get(signal["layer_name"]), signal)
            outcome = sim.end_epoch()
            emit("EpochOutcome", outcome)
            key = (sim.model_id, outcome["run_id"])
            if key not in episodes:
                episodes[key] = EpisodeResult(sim.model_id, outcome["run_id"], outcome["val_loss"],
                                              outcome["val_loss"], 0)
            episodes[key].final_val_loss = outcome["val_loss"]
            item = prepare(outcome, st["topology"], st["windows"], st["gate"], gate)
            if item is not None:
                due.append(item)
                sims_due.append(sim)
        for sim, made in zip(sims_due, decide(due, policy, version, gate)):
            st = state[sim.model_id]
            emit("DecisionRecord", made.record)
            st["gate"] = made.gate
            if made.command is not None:
                emit("AdaptationCommand", made.command)
                answer = sim.apply(made.command)
                emit("CommandOutcome", answer)
                if answer["status"] == "APPLIED":
                    episodes[(sim.model_id, made.record["run_id"])].parameters_added += answer["parameter_delta"]
        clock.ms += EPOCH_MS
    return records, list(episodes.values())


@dataclass(frozen=True)
class ReturnSummary:
    mean: float
    low: float
    high: float
    episodes: int

    def as_dict(self) -> dict[str, float | int]:
        return {"value": self.mean, "ci_low": self.low, "ci_high": self.high, "episodes": self.episodes}


def summarise_returns(episodes: list[EpisodeResult], reward: RewardConfig, bootstrap: int = 1000,
                      seed: int = 0) -> ReturnSummary:
    """Mean episode return with a 95 % bootstrap interval."""
    values = np.array([e.episode_return(reward.parameter_cost) for e in episodes])
    rng = np.random.default_rng(seed)
    boot = values[rng.integers(0, len(values), size=(bootstrap, len(values)))].mean(axis=1)
    low, high = np.quantile(boot, [0.025, 0.975])
    return ReturnSummary(float(values.mean()), float(low), float(high), len(values))
