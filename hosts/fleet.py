"""Fleet: many SimulatedModels in one process, speaking the same Kafka contract as a real host.

Per model and epoch it publishes one HealthBatch of ``signals_per_epoch`` reports (each one
HealthSignal per layer) and an EpochOutcome, plus a ModelTopology at the start of every run and
after every applied command. It reads the commands topic from its end (no consumer group), applies
each command at most once to the model its key names, and answers with a CommandOutcome on the
outcomes topic. All records are keyed by model id. Throughput (measured when it sent a HealthReport
per round): about 50k records/s for 1,000 models on 2 cores, most of it spent in Avro encoding.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np

from hosts.pacing import WorkerLag, hold_back
from hosts.simulation import SimulatedModel, SimulationParams
from hosts.wire import CommandReader, Publisher
from tamiyo.config import Settings

log = logging.getLogger(__name__)


@dataclass
class FleetStats:
    models: int = 0
    health_signals: int = 0
    health_reports: int = 0  # rounds of one signal per layer (signals_per_epoch per model and epoch)
    health_messages: int = 0  # HealthBatches: one per model and epoch
    epochs: int = 0
    runs: int = 0
    topologies: int = 0
    commands_received: int = 0
    commands_applied: int = 0
    duplicates: int = 0
    rejected: int = 0
    invalid_commands: int = 0
    messages_produced: int = 0
    delivery_failures: int = 0
    elapsed_s: float = 0.0
    held_back_s: float = 0.0  # waiting for the workers to catch up (``max_worker_lag``)

    @property
    def messages_per_s(self) -> float:
        return self.messages_produced / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self) | {"messages_per_s": round(self.messages_per_s, 1)}


class Fleet:
    """``models`` simulated hosts with ids ``sim-{seed}-{i:04d}``, each with its own seeded RNG."""

    def __init__(
        self,
        settings: Settings,
        models: int,
        seed: int = 0,
        epochs_per_run: int = 20,
        signals_per_epoch: int = 2,
        num_layers: int | None = None,
        params: SimulationParams = SimulationParams(),
    ) -> None:
        self.settings = settings
        salt = np.base_repr(int(time.time() * 1000), 36).lower()  # run ids differ between launches
        rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(models)]
        self.models = {
            f"sim-{seed}-{i:04d}": SimulatedModel(f"sim-{seed}-{i:04d}", rng, num_layers=num_layers,
                                                  epochs_per_run=epochs_per_run, signals_per_epoch=signals_per_epoch,
                                                  params=params, run_salt=salt)
            for i, rng in enumerate(rngs)
        }
        self.stats = FleetStats(models=models)

    def run(
        self,
        duration_s: float | None = None,
        epochs: int | None = None,
        epoch_interval_s: float = 1.0,
        stop_event: threading.Event | None = None,
        max_worker_lag: int = 0,
        max_hold_s: float = 5.0,
    ) -> FleetStats:
        """Simulate until ``epochs`` epochs per model, ``duration_s`` seconds, or ``stop_event``.

        ``max_worker_lag`` > 0: before each round of epochs, wait (answering commands, at most
        ``max_hold_s``) while the workers have more than that many health and outcome messages
        uncommitted (``hosts/pacing.py``). 0 sends at the set rate whatever the workers do.
        """
        stop = stop_event or threading.Event()
        topics = self.settings.topics
        reader = CommandReader(self.settings)  # before the first topology: no command can be missed
        publisher = Publisher(self.settings)
        stats = self.stats
        started = time.monotonic()
        deadline = started + duration_s if duration_s is not None else float("inf")
        next_epoch = started
        announced: dict[str, str] = {}  # model id -> run id of the last topology published
        lag = WorkerLag(self.settings) if max_worker_lag > 0 else None

        def idle(seconds: float) -> None:
            self._handle_commands(reader, publisher, seconds)
            publisher.poll()

        try:
            epoch = 0
            while not stop.is_set() and (epochs is None or epoch < epochs) and time.monotonic() < deadline:
                if lag is not None:
                    stats.held_back_s += hold_back(lag.messages, max_worker_lag, max_hold_s, idle)
                for i, (model_id, model) in enumerate(self.models.items()):
                    if model.run_over or model.run_id != announced.get(model_id):  # a command may start a run
                        topology = model.topology()
                        publisher.send(topics.topology, model_id, "ModelTopology", topology)
                        announced[model_id] = topology["run_id"]
                        stats.topologies += 1
                        stats.runs += 1
                    reports = [model.health_signals() for _ in range(model.signals_per_epoch)]
                    publisher.send_reports(topics.health, model_id, model.run_id, reports)
                    stats.health_signals += sum(len(report) for report in reports)
                    stats.health_reports += len(reports)
                    stats.health_messages += 1
                    publisher.send(topics.outcomes, model_id, "EpochOutcome", model.end_epoch())
                    stats.epochs += 1
                    if i % 100 == 99:
                        self._handle_commands(reader, publisher, 0.0)
                        if stop.is_set():
                            break
                epoch += 1
                next_epoch = max(next_epoch + epoch_interval_s, time.monotonic())  # late: no catch-up burst
                while not stop.is_set() and time.monotonic() < min(next_epoch, deadline):
                    self._handle_commands(reader, publisher, min(0.05, max(0.0, next_epoch - time.monotonic())))
                    publisher.poll()
                self._handle_commands(reader, publisher, 0.0)
                if epoch % 10 == 0:
                    log.info("fleet: %s", stats.as_dict())
            # Answer commands for the last epoch that are already in flight.
            self._handle_commands(reader, publisher, 0.2)
        finally:
            left = publisher.flush()
            reader.close()
            if lag is not None:
                lag.close()
            stats.messages_produced = publisher.sent - left
            stats.delivery_failures = publisher.failed + left
            stats.invalid_commands = reader.invalid
            stats.elapsed_s = time.monotonic() - started
        return stats

    def _handle_commands(self, reader: CommandReader, publisher: Publisher, timeout: float) -> None:
        stats = self.stats
        for key, command in reader.poll(timeout):
            model = self.models.get(key.decode(errors="replace") if key else command["model_id"])
            if model is None:
                continue  # another fleet's or host's model
            stats.commands_received += 1
            outcome = model.apply(command)
            status = outcome["status"]
            stats.commands_applied += status == "APPLIED"
            stats.duplicates += status == "DUPLICATE"
            stats.rejected += status == "REJECTED"
            publisher.send(self.settings.topics.outcomes, model.model_id, "CommandOutcome", outcome)
            if status == "APPLIED":  # parameter counts changed, as a real host reports
                publisher.send(self.settings.topics.topology, model.model_id, "ModelTopology", model.topology())
                stats.topologies += 1


def run_fleet(
    settings: Settings,
    models: int,
    duration_s: float | None = None,
    epochs: int | None = None,
    epoch_interval_s: float = 1.0,
    seed: int = 0,
    stop_event: threading.Event | None = None,
    epochs_per_run: int = 20,
    signals_per_epoch: int = 2,
    max_worker_lag: int = 0,
) -> FleetStats:
    """Build a Fleet and run it (see ``Fleet.run``); returns its counters."""
    fleet = Fleet(settings, models, seed=seed, epochs_per_run=epochs_per_run, signals_per_epoch=signals_per_epoch)
    stats = fleet.run(duration_s=duration_s, epochs=epochs, epoch_interval_s=epoch_interval_s, stop_event=stop_event,
                      max_worker_lag=max_worker_lag)
    log.info("fleet finished: %s", stats.as_dict())
    return stats
