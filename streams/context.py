"""What every agent of one worker shares: settings, tables, the serving policy and counters."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from streams.parking import Parking
from tamiyo.config import Settings


@dataclass
class Counters:
    """Plain counters; exported as Prometheus metrics and printed in the worker's final log line."""

    health_signals: int = 0
    topologies: int = 0
    epoch_outcomes: int = 0
    command_outcomes: int = 0
    decisions: int = 0
    window_close_decisions: int = 0  # of ``decisions``, those made because a telemetry window closed
    commands_sent: int = 0
    dead_letters: int = 0
    archived: int = 0
    skipped_no_topology: int = 0
    signal_waits: int = 0  # epoch outcomes that arrived before their epoch's signals were folded
    signal_wait_timeouts: int = 0  # of those, decided at TAMIYO_SIGNAL_WAIT_SECONDS without them all
    stale_signals: int = 0  # signals of a run a newer run of their model replaced: archived, not folded
    stale_outcomes: int = 0  # epoch outcomes of such runs: archived, not decided
    stale_topologies: int = 0  # topologies of such runs: archived, not stored
    # gate states corrected by a host's APPLIED or DUPLICATE answer: it had handled a command of the
    # decision id the gate did not know (a re-decision after a worker crash; see follow_host)
    host_corrections: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class WorkerContext:
    settings: Settings
    topologies: Any = None  # faust Table: model_id -> ModelTopology dict
    graphs: Any = None  # faust windowed Table: model_id -> {"run_id", "epoch", "layers": {name: aggregate}}
    gate_state: Any = None  # faust Table: model_id -> policy gate state (cooldowns, last decided epoch)
    policy: Any = None  # streams.policy_holder.PolicyHolder
    metrics: Any = None  # streams.metrics.WorkerMetrics or None
    counters: Counters = field(default_factory=Counters)
    parked_signals: Parking = field(default_factory=lambda: Parking(30.0, 100_000))
    parked_outcomes: Parking = field(default_factory=lambda: Parking(30.0, 100_000))
    waiting_for_signals: Parking = field(default_factory=lambda: Parking(1.0, 100_000))
    # Set by the telemetry agent when it folded signals or stored a topology that parked or waiting
    # outcomes may need: the policy agent's decider wakes at once instead of at its next poll.
    wake_decider: asyncio.Event = field(default_factory=asyncio.Event)
    folded: set[str] = field(default_factory=set)  # waiting models folded since the decider last looked
    # Outcomes partition -> offset after the last outcome the policy agent handled (decided, parked
    # or dead-lettered): the window-close trigger's "caught up", which held commits lag behind.
    outcomes_handled: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.parked_signals = Parking(self.settings.park_seconds, self.settings.park_capacity)
        self.parked_outcomes = Parking(self.settings.park_seconds, self.settings.park_capacity)
        self.waiting_for_signals = Parking(self.settings.signal_wait_seconds, self.settings.park_capacity)
