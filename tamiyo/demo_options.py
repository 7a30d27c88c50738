"""``tamiyo demo``'s options and their defaults, in a module light enough for the CLI to import."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DemoOptions:
    duration_s: float = 90.0  # seconds of traffic (TAMIYO_DEMO_SECONDS overrides it on the CLI)
    hosts: int = 2  # real training hosts
    host_epochs: int = 8
    # The real hosts train flat out; on a small machine they would starve the worker (in production
    # they run elsewhere). Niceness 10: they get the CPU the worker, fleet and broker leave.
    host_nice: int = 10
    fleet_models: int = 120  # simulated models
    fleet_epoch_interval_s: float = 0.5
    # The fleet holds back while the worker has more than this many rounds (2 messages per model)
    # uncommitted: a worker behind drops whole runs as stale (hosts/pacing.py). 0: never.
    fleet_max_lag_rounds: int = 4
    bad_messages: int = 5  # malformed messages injected, to show the dead-letter path
    summary_path: str | None = None
    drain_timeout_s: float = 30.0
    learning: bool = True  # collect, train, promote, hot-swap
    # Collection lasts duration_s / 2, then goes on (at most until collect_max_s) while the worker has
    # made fewer decisions than this: too few and the off-policy estimate is too uncertain to promote.
    collect_min_decisions: int = 10_000
    collect_max_s: float = 150.0
    epsilon: float = 0.5  # exploration of the behaviour policy while collecting
    train_epochs: int = 20
    learner: str = "lcbq"  # offline learner of the learning phase (see ``tamiyo train``)
    champion_poll_s: float = 2.0
    swap_timeout_s: float = 60.0
    worker_ready_timeout_s: float = 180.0
