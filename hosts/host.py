"""run_host: train a real KasminaMLP on digits and follow the controller over Kafka.

Publishes (keyed by model id) a ModelTopology at start and after every applied command, a report
(one HealthSignal per layer) every ``report_every_steps`` steps, and an EpochOutcome per epoch
(``final=True`` on the last). Reports are sent as HealthBatch messages: each epoch's reports go out
before its EpochOutcome, and earlier whenever ``reports_per_message`` of them are waiting; the
outcome names the step of the epoch's last report, so the controller decides on all of them. Reads
AdaptationCommands from the partition its key hashes to, starting at the end offset captured before
the first topology, applies each decision id at most once and answers with a CommandOutcome. After
each epoch but the last it waits up to ``decision_wait_s`` for a command about that epoch, so the
controller can act before training goes on (0 disables the wait).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import torch

from hosts.commands import CommandLedger, apply_once, check_command
from hosts.trainer import DigitsTrainer
from hosts.wire import CommandReader, Publisher
from tamiyo.config import Settings

log = logging.getLogger(__name__)


@dataclass
class HostStats:
    model_id: str
    run_id: str
    epochs: int = 0
    steps: int = 0
    health_signals: int = 0
    health_reports: int = 0
    health_messages: int = 0  # HealthBatches
    topologies: int = 0
    commands_received: int = 0
    commands_applied: int = 0
    duplicates: int = 0
    rejected: int = 0
    parameter_count: int = 0
    final_val_loss: float = float("nan")
    final_val_accuracy: float = float("nan")
    train_seconds: float = 0.0  # training time only (no waiting for decisions)
    elapsed_s: float = 0.0

    @property
    def seconds_per_epoch(self) -> float:
        return self.train_seconds / self.epochs if self.epochs else 0.0


def _now_ms() -> int:
    return int(time.time() * 1000)


class _Host:
    def __init__(self, settings: Settings, model_id: str, trainer: DigitsTrainer, run_id: str,
                 reports_per_message: int = 8) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.model_id = model_id
        self.trainer = trainer
        self.run_id = run_id
        self.stats = HostStats(model_id, run_id)
        self.ledger = CommandLedger()
        self.ledger.new_run(run_id)
        self.reader = CommandReader(settings, keys=[model_id.encode()])  # before the first topology
        self.publisher = Publisher(settings, **{"linger.ms": 5})
        self.run_start_ms = _now_ms()
        self.epoch = 0  # the epoch being trained
        self.reports_per_message = max(1, reports_per_message)
        self.pending: list[list[dict[str, Any]]] = []  # reports not sent yet
        self.last_report_step: int | None = None  # of the epoch being trained

    def publish_topology(self) -> None:
        record = {"model_id": self.model_id, "run_id": self.run_id, "timestamp_ms": _now_ms(),
                  **self.trainer.net.topology()}
        self.publisher.send(self.topics.topology, self.model_id, "ModelTopology", record)
        self.stats.topologies += 1

    def report_health(self, step: int) -> None:
        """One report, a HealthSignal per Kasmina layer at this step; sent when ``reports_per_message``
        are waiting (or by ``send_health``)."""
        now = _now_ms()
        signals = [{"model_id": self.model_id, "run_id": self.run_id, "layer_name": name, "epoch": self.epoch,
                    "step": step, "timestamp_ms": now, **layer.health()}
                   for name, layer in self.trainer.net.kasmina_layers.items()]
        self.pending.append(signals)
        self.last_report_step = step
        self.stats.health_signals += len(signals)
        self.stats.health_reports += 1
        if len(self.pending) >= self.reports_per_message:
            self.send_health()

    def send_health(self) -> None:
        """The waiting reports as one HealthBatch message."""
        if self.pending:
            self.publisher.send_reports(self.topics.health, self.model_id, self.run_id, self.pending)
            self.pending = []
            self.stats.health_messages += 1
            self.publisher.poll()

    def handle_commands(self, timeout: float = 0.0) -> set[int]:
        """Apply what arrived; returns the epochs the handled commands were decided for."""
        epochs = set()
        for key, command in self.reader.poll(timeout):
            owner = key.decode(errors="replace") if key else command.get("model_id")
            if owner != self.model_id:
                continue  # another model on the same partition
            self.stats.commands_received += 1
            epochs.add(int(command["epoch"]))
            self.publisher.send(self.topics.outcomes, self.model_id, "CommandOutcome", self.apply(command))
        if epochs:
            self.publisher.poll()
        return epochs

    def apply(self, command: dict[str, Any]) -> dict[str, Any]:
        outcome = apply_once(self.ledger, command, self._execute, self.model_id, self.run_id, self.epoch, _now_ms())
        status = outcome["status"]
        if status == "APPLIED":
            self.stats.commands_applied += 1
        elif status == "DUPLICATE":
            self.stats.duplicates += 1
        else:
            self.stats.rejected += 1
        log.info("%s: %s %s -> %s %s", self.model_id, command["decision_id"], command["action"], status,
                 outcome["reason"])
        if status == "APPLIED":
            self.publish_topology()  # parameter counts changed
        return outcome

    def _execute(self, command: dict[str, Any]) -> int:
        check_command(command, self.model_id, self.run_id, self.run_start_ms, self.epoch)
        return self.trainer.apply(command)

    def wait_for_decision(self, epoch: int, wait_s: float, stop: threading.Event) -> None:
        deadline = time.monotonic() + wait_s
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or epoch in self.handle_commands(min(left, 0.1)):
                return

    def close(self) -> None:
        self.send_health()
        left = self.publisher.flush()
        if left:
            log.warning("%s: %d messages were not delivered", self.model_id, left)
        self.reader.close()


def run_host(
    settings: Settings,
    model_id: str,
    epochs: int = 10,
    seed: int = 0,
    hidden: tuple[int, ...] = (64, 64, 32),
    report_every_steps: int = 20,
    reports_per_message: int = 8,
    epoch_timeout_s: float | None = None,
    decision_wait_s: float = 0.5,
    stop_event: threading.Event | None = None,
    batch_size: int = 32,
    lr: float = 3e-3,
    num_seeds: int = 4,
) -> HostStats:
    """Train for ``epochs`` epochs (one run) and return the counters.

    ``epoch_timeout_s`` caps one epoch's training time (None: no cap); ``stop_event`` ends the run
    early after the current step (the last EpochOutcome is then not final).
    """
    torch.set_num_threads(1)
    stop = stop_event or threading.Event()
    started = time.monotonic()
    trainer = DigitsTrainer(seed=seed, hidden=hidden, batch_size=batch_size, lr=lr, num_seeds=num_seeds)
    host = _Host(settings, model_id, trainer, run_id=f"{model_id}-{uuid.uuid4().hex[:12]}",
                 reports_per_message=reports_per_message)
    stats = host.stats

    def after_step(step: int) -> None:
        if step % report_every_steps == 0:
            host.report_health(step)
            host.handle_commands(0.0)
        if stop.is_set():
            raise _Stopped

    try:
        host.publish_topology()
        for epoch in range(epochs):
            host.epoch, host.last_report_step = epoch, None
            try:
                result = trainer.train_epoch(after_step, timeout_s=epoch_timeout_s)
            except _Stopped:
                break
            final = epoch == epochs - 1
            host.send_health()  # the epoch's signals before its outcome: the controller decides on them
            host.epoch = epoch + 1  # epoch ``epoch`` has ended: commands about it are now valid
            outcome = {"model_id": model_id, "run_id": host.run_id, "epoch": epoch, "timestamp_ms": _now_ms(),
                       "train_loss": result.train_loss, "val_loss": result.val_loss,
                       "train_accuracy": result.train_accuracy, "val_accuracy": result.val_accuracy,
                       "parameter_count": trainer.parameter_count(), "final": final,
                       "last_report_step": host.last_report_step}
            host.publisher.send(settings.topics.outcomes, model_id, "EpochOutcome", outcome)
            host.publisher.poll()
            stats.epochs += 1
            stats.train_seconds += result.seconds
            stats.final_val_loss, stats.final_val_accuracy = result.val_loss, result.val_accuracy
            log.info("%s epoch %d: val_loss %.4f val_acc %.3f (%.2f s)", model_id, epoch, result.val_loss,
                     result.val_accuracy, result.seconds)
            if final or stop.is_set():
                break
            if decision_wait_s > 0:
                host.publisher.flush(5.0)  # the controller must see the outcome to answer it
                host.wait_for_decision(epoch, decision_wait_s, stop)
            else:
                host.handle_commands(0.0)
    finally:
        stats.steps = trainer.step
        stats.parameter_count = trainer.parameter_count()
        host.close()
        stats.elapsed_s = time.monotonic() - started
    return stats


class _Stopped(Exception):
    """Raised from the step callback to leave the training loop when asked to stop."""
