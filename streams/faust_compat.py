"""The one place that touches Faust internals.

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
