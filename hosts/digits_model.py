"""DigitsModel: the real host's network and data (``hosts.trainer.DigitsTrainer``) behind the
interface of ``hosts.simulation.SimulatedModel``, for in-process policy rollouts.

``tamiyo host`` trains the same KasminaMLP on the same digits split and applies commands with the
same ``DigitsTrainer.apply``; here the epoch loop is driven by ``training.rollout`` instead of
Kafka, so many seeded runs can be compared policy against policy. Each run is a fresh network
(seeded by model and run), trained for ``epochs_per_run`` epochs.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

from hosts.commands import CommandLedger, apply_once, check_command
from hosts.trainer import DigitsTrainer, EpochResult


class DigitsModel:
    """One real training run after another for ``model_id`` (signals from real activations)."""

    signals_per_epoch = 1  # health_signals() trains the whole epoch and returns its reports

    def __init__(self, model_id: str, seed: int, epochs_per_run: int = 20, report_every_steps: int = 20,
                 clock: Callable[[], float] = time.time, **trainer_args: Any) -> None:
        self.model_id = model_id
        self.seed = seed
        self.epochs_per_run = epochs_per_run
        self.report_every_steps = report_every_steps
        self.clock = clock
        self.trainer_args = trainer_args
        self.ledger = CommandLedger()
        self.runs_started = 0
        self.run_id = ""
        self.run_start_ms = 0
        self.epoch = 0
        self.trainer: DigitsTrainer | None = None
        self._result: EpochResult | None = None
        self._pending_run = True

    @property
    def run_over(self) -> bool:
        return self._pending_run

    def _ensure_run(self) -> DigitsTrainer:
        if self._pending_run or self.trainer is None:
            self.runs_started += 1
            self.run_id = f"{self.model_id}-run{self.runs_started:04d}"
            self.run_start_ms = self._now_ms()
            self.epoch = 0
            self.trainer = DigitsTrainer(seed=self.seed * 1000 + self.runs_started, **self.trainer_args)
            self.ledger.new_run(self.run_id)
            self._pending_run = False
        return self.trainer

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def topology(self) -> dict[str, Any]:
        trainer = self._ensure_run()
        return {"model_id": self.model_id, "run_id": self.run_id, "timestamp_ms": self._now_ms(),
                **trainer.net.topology()}

    def health_signals(self) -> list[dict[str, Any]]:
        """Train the current epoch; one HealthSignal per layer every ``report_every_steps`` steps."""
        trainer = self._ensure_run()
        signals: list[dict[str, Any]] = []

        def report(step: int) -> None:
            if step % self.report_every_steps == 0:
                for name, layer in trainer.net.kasmina_layers.items():
                    signals.append({"model_id": self.model_id, "run_id": self.run_id, "layer_name": name,
                                    "epoch": self.epoch, "step": step, "timestamp_ms": self._now_ms(),
                                    **layer.health()})

        with _one_thread():
            self._result = trainer.train_epoch(report)
        return signals

    def end_epoch(self) -> dict[str, Any]:
        """The EpochOutcome of the epoch ``health_signals`` trained (trains it first if it did not)."""
        if self._result is None:
            self.health_signals()
        trainer, result = self.trainer, self._result
        assert trainer is not None and result is not None
        final = self.epoch >= self.epochs_per_run - 1
        outcome = {"model_id": self.model_id, "run_id": self.run_id, "epoch": self.epoch,
                   "timestamp_ms": self._now_ms(), "train_loss": result.train_loss, "val_loss": result.val_loss,
                   "train_accuracy": result.train_accuracy, "val_accuracy": result.val_accuracy,
                   "parameter_count": trainer.parameter_count(), "final": final}
        self.epoch += 1
        self._result = None
        self._pending_run = final
        return outcome

    def apply(self, command: dict[str, Any]) -> dict[str, Any]:
        """Apply an AdaptationCommand at most once (by decision id), as ``tamiyo host`` does."""
        trainer = self._ensure_run()

        def execute(command: dict[str, Any]) -> int:
            check_command(command, self.model_id, self.run_id, self.run_start_ms, self.epoch)
            return trainer.apply(command)

        return apply_once(self.ledger, command, execute, self.model_id, self.run_id, self.epoch, self._now_ms())


class _one_thread:
    """Tiny networks train fastest on one thread (and leave the other core to the rest)."""

    def __enter__(self) -> None:
        self.saved = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.saved)
