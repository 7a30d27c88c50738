"""``tamiyo demo``'s options and their defaults, in a module light enough for the CLI to import."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DemoOptions:
    duration_s: float = 90.0  # seconds of traffic (TAMIYO_DEMO_SECONDS overrides it on the CLI)
    hosts: int = 2  # real training hosts
    host_epochs: int = 8
    fleet_models: int = 120  # simulated models
    fleet_epoch_interval_s: float = 0.5
    bad_messages: int = 5  # malformed messages injected, to show the dead-letter path
    summary_path: str | None = None
    drain_timeout_s: float = 30.0
    learning: bool = True  # collect, train, promote, hot-swap
    epsilon: float = 0.5  # exploration of the behaviour policy while collecting
    train_epochs: int = 20
    learner: str = "lcbq"  # offline learner of the learning phase (see ``tamiyo train``)
    champion_poll_s: float = 2.0
    swap_timeout_s: float = 60.0
    worker_ready_timeout_s: float = 180.0
