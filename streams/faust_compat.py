"""Faust internals, part one (part two, the post-rebalance seek, is ``streams/faust_seek.py``).

Faust picks a table's changelog partition from the *current event*. Inside ``take_events`` the
current event is whichever message came last, so a batched write for model A could land in the
changelog partition of model B and be recovered on the wrong worker. ``as_current`` makes the
event that carried the model's own message current while its table entry is written.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Any, Iterator

from faust import streams as _faust_streams


@contextmanager
def as_current(event: Any) -> Iterator[None]:
    if event is None:
        yield
        return
    token = _faust_streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _faust_streams._current_event.reset(token)


# Commit floors. A message can be acked to Faust (its batch is done) while its handling is still
# pending in memory — a HealthSignal parked until its model's topology arrives. Faust would commit
# past it, and a crash would then lose it. ``hold_commit`` keeps the consumer group's committed
# offset of that partition at or below the message until ``release_commit`` (called once the message
# has been archived or dead-lettered and that output delivered); after a crash the message is read
# again. The cap is applied where Faust computes the offset to commit (``Consumer._new_offset``).
_floors: dict[Any, dict[int, int]] = {}
_installed = False


def hold_commit(event: Any) -> None:
    """Do not commit the offset of ``event``'s message, or any later one of its partition, for now."""
    if event is None:
        return
    _install()
    message = event.message
    holds = _floors.setdefault(message.tp, {})
    holds[message.offset] = holds.get(message.offset, 0) + 1


def release_commit(events: Any) -> None:
    """Undo ``hold_commit`` for each event (its output has been delivered)."""
    for event in events:
        if event is None:
            continue
        message = event.message
        holds = _floors.get(message.tp)
        if not holds or message.offset not in holds:
            continue
        holds[message.offset] -= 1
        if holds[message.offset] <= 0:
            del holds[message.offset]
        if not holds:
            del _floors[message.tp]


def _install() -> None:
    global _installed
    if _installed:
        return
    from faust.transport.consumer import Consumer

    original = Consumer._new_offset

    def _new_offset(self: Any, tp: Any) -> Any:
        holds = _floors.get(tp)
        acked = self._acked[tp] if holds else None
        if not holds or not acked:
            return original(self, tp)
        floor = min(holds)
        above = [offset for offset in acked if offset >= floor]
        if not above:
            return original(self, tp)
        acked[:] = [offset for offset in acked if offset < floor]  # Faust sees only what is below the floor
        try:
            return original(self, tp) if acked else None
        finally:
            acked.extend(above)
            acked.sort()

    Consumer._new_offset = _new_offset
    _installed = True
