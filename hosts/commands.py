"""CommandLedger: apply each AdaptationCommand's decision id at most once, in bounded memory, and
tell which command of an id was the one handled."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable


ACTION_FIELDS = ("action", "layer_name", "seed_index", "kernel")


def action_of(command: dict[str, Any]) -> dict[str, Any]:
    """The fields of a command that say what it asks for (a CommandOutcome v2 repeats them)."""
    return {name: command.get(name) for name in ACTION_FIELDS}


class CommandLedger:
    """Decision ids already handled (applied or rejected), each with the action of the command that
    was handled: the first one received under that id.

    Every id of the current run is remembered (a run sees few decisions); across runs only the last
    ``capacity`` ids are kept, enough to catch redeliveries of recent commands after a run change.
    """

    def __init__(self, capacity: int = 1024) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.run_id: str | None = None
        self._run: dict[str, dict[str, Any] | None] = {}
        self._recent: OrderedDict[str, dict[str, Any] | None] = OrderedDict()

    def __contains__(self, decision_id: object) -> bool:
        return decision_id in self._run or decision_id in self._recent

    def __len__(self) -> int:
        return len(self._run | self._recent.keys())

    def first_time(self, decision_id: str, command: dict[str, Any] | None = None) -> bool:
        """Record ``decision_id`` (with the action of ``command``); True if it was never seen before
        (the caller may apply it). A seen id keeps the action recorded the first time."""
        if decision_id in self:
            if decision_id in self._recent:
                self._recent.move_to_end(decision_id)
            return False
        action = action_of(command) if command is not None else None
        self._run[decision_id] = action
        self._recent[decision_id] = action
        if len(self._recent) > self.capacity:
            self._recent.popitem(last=False)
        return True

    def handled(self, decision_id: str) -> dict[str, Any] | None:
        """The action fields of the command handled under ``decision_id`` (None: unknown)."""
        action = self._run.get(decision_id)
        return action if action is not None else self._recent.get(decision_id)

    def new_run(self, run_id: str) -> None:
        """Start a new run: forget the old run's full set, keep the recent ids."""
        self.run_id = run_id
        self._run = {}


class Rejected(Exception):
    """A command a host will not apply; the message is the CommandOutcome reason."""


def check_command(command: dict[str, Any], model_id: str, run_id: str, run_start_ms: int, epoch: int) -> None:
    """Raise Rejected for commands that cannot belong to this run (real and simulated hosts).

    ``epoch`` is the epoch being trained; a decision is made after an epoch ends, so a valid
    command's epoch is below it. A command decided before the run started is for an earlier run.
    """
    if command.get("model_id") != model_id:
        raise Rejected(f"command for model {command.get('model_id')!r} reached {model_id!r}")
    action = command.get("action")
    if action not in ("GERMINATE", "CULL"):
        raise Rejected(f"action {action!r} is not a command (WAIT is never sent)")
    if int(command.get("timestamp_ms") or 0) < run_start_ms:
        raise Rejected(f"decided before run {run_id} started (a command for an earlier run)")
    if not 0 <= int(command.get("epoch", -1)) < epoch:
        raise Rejected(f"epoch {command.get('epoch')} has not ended in run {run_id} (now in epoch {epoch})")


def apply_once(ledger: CommandLedger, command: dict[str, Any], execute: Callable[[dict[str, Any]], int],
               model_id: str, run_id: str, epoch: int, now_ms: int) -> dict[str, Any]:
    """Apply ``command`` at most once per decision id and return its CommandOutcome: DUPLICATE when
    the ledger has seen it, REJECTED when ``execute`` raises Rejected, else APPLIED with the
    parameter delta ``execute`` returns (real and simulated hosts share this).

    The outcome names the action of the command handled under that id (CommandOutcome v2): this
    one, or for a DUPLICATE the first one, which differs when a worker re-decided the epoch
    differently after a crash. The controller's gate and training follow what the host did."""
    delta = 0
    if not ledger.first_time(command["decision_id"], command):
        status, reason = "DUPLICATE", "decision already handled"
    else:
        try:
            delta = execute(command)
            status, reason = "APPLIED", ""
        except Rejected as exc:
            status, reason = "REJECTED", str(exc)
    # What the ledger recorded for the id: this command's action when it is the first, else the first
    # one's (an id recorded by a caller without its command names none).
    handled = ledger.handled(command["decision_id"]) or {name: None for name in ACTION_FIELDS}
    return {"decision_id": command["decision_id"], "model_id": model_id, "run_id": run_id,
            "epoch": int(command.get("epoch", epoch)), "timestamp_ms": now_ms, "status": status,
            "reason": reason, "parameter_delta": int(delta), **handled}
