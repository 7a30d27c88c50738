"""The window-close trigger: which models are due when their telemetry window closes (pure logic).

A host that streams health signals but never sends (or is late sending) its EpochOutcome is
still evaluated. Signals of epoch E show that epoch E-1 has ended (hosts accept commands only for
epochs that ended), so when a model's newest closed window holds signals up to epoch E, epoch E-1
is due unless it was already decided. Tumbling windows start at multiples of ``window_s``; one
closes ``window_s`` after its start, by the worker's wall clock like Faust's own expiry, and is
acted on ``grace_s`` later, which gives an EpochOutcome sent on time the first word.

At most one decision per model and epoch, whichever trigger comes first: both triggers check the
same gate state (last decided epoch) under one lock, and share one decision id per epoch.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

TRIGGER = "window_close"


def closed_until(now_s: float, window_s: float, grace_s: float) -> float:
    """The end of the newest window that closed at least ``grace_s`` ago; it moves once per window."""
    return math.floor((now_s - grace_s) / window_s) * window_s


def newest_closed_windows(entries: Iterable[tuple[Any, Any]], now_s: float, window_s: float,
                          grace_s: float) -> dict[str, tuple[float, dict]]:
    """Per model, the newest window with signals that closed at least ``grace_s`` before ``now_s``.

    ``entries`` are the windowed table's raw items: ``((model_id, (start, end)), state)``.
    Returns ``model_id -> (window start, state)``.
    """
    last_start = closed_until(now_s, window_s, grace_s) - window_s
    newest: dict[str, tuple[float, dict]] = {}
    for (model_id, (start, _end)), state in entries:
        if start > last_start or not state or not state.get("layers"):
            continue
        if model_id not in newest or start > newest[model_id][0]:
            newest[model_id] = (float(start), state)
    return newest


def due_on_close(entries: Iterable[tuple[Any, Any]], now_s: float, window_s: float, grace_s: float,
                 last_decided: Callable[[str, str], int]) -> list[tuple[dict, float]]:
    """The epochs to decide, as ``(stand-in outcome, window start)``, before ownership is checked.

    The stand-in outcome carries what a decision needs of an EpochOutcome: model_id, run_id,
    epoch (E-1) and timestamp_ms (the window's end). ``last_decided(model_id, run_id)`` is the
    newest decided epoch of that run (-1: none).
    """
    due = []
    for model_id, (start, state) in newest_closed_windows(entries, now_s, window_s, grace_s).items():
        epoch = int(state.get("epoch", -1)) - 1
        run_id = state.get("run_id")
        if epoch < 0 or run_id is None or last_decided(model_id, run_id) >= epoch:
            continue
        outcome = {"model_id": model_id, "run_id": run_id, "epoch": epoch,
                   "timestamp_ms": int((start + window_s) * 1000)}
        due.append((outcome, start))
    return due


class OutcomeMarks:
    """Whether the outcomes sent before a window closed have all been processed, per partition.

    When the windows up to ``closed`` are first judged, the partition's high watermark is marked;
    the partition is caught up once its committed offset reaches the mark. An EpochOutcome sent
    before then (merely unread, or read but not yet decided) keeps the first word, and one sent
    later is late. Comparing with the live high watermark instead would starve a partition that
    never stops receiving outcomes.
    """

    def __init__(self) -> None:
        self._marks: dict[int, tuple[float, int]] = {}

    def caught_up(self, partition: int, closed: float, highwater: int | None, committed: int) -> bool:
        mark = self._marks.get(partition)
        if mark is None or mark[0] != closed:
            if highwater is None:  # nothing fetched yet: unknown
                return False
            mark = self._marks[partition] = (closed, highwater)
        return committed >= mark[1]
