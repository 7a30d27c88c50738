"""Stand-ins for the worker's Faust tables, producer and events: the agents' bookkeeping without Kafka."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from schemas import encode
from streams.context import WorkerContext
from streams.intake import RawMessage
from tamiyo.config import Settings


class Table(dict):
    """A Faust table as the agents use it: ``get``, item reads and writes."""


class _Cell:
    def __init__(self, data: dict, key: tuple) -> None:
        self._data, self._key = data, key

    def value(self) -> Any:
        return self._data.get(self._key)


class _Window:
    def __init__(self, table: "WindowedTable", start: float) -> None:
        self._table, self._start = table, start

    def __getitem__(self, model_id: str) -> _Cell:
        return _Cell(self._table.data, (model_id, self._start))

    def __setitem__(self, model_id: str, value: Any) -> None:
        self._table.writes.append((model_id, self._start))
        self._table.data[(model_id, self._start)] = value


class WindowedTable:
    """A tumbling windowed table: ``relative_to(seconds)[model_id]``; ``data`` is keyed by (model, window start)."""

    def __init__(self, size_s: float) -> None:
        self.size_s = size_s
        self.data: dict[tuple[str, float], Any] = {}
        self.writes: list[tuple[str, float]] = []

    def relative_to(self, timestamp_s: float) -> _Window:
        return _Window(self, (timestamp_s // self.size_s) * self.size_s)


class Producer:
    """Records what is sent; the first ``failures`` deliveries fail (a broker hiccup)."""

    def __init__(self, failures: int = 0) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []
        self.failures = failures

    async def send(self, topic, key, value, partition, timestamp, headers):  # type: ignore[no-untyped-def]
        future = asyncio.get_running_loop().create_future()
        if self.failures:
            self.failures -= 1
            future.set_exception(RuntimeError("NotLeaderForPartition"))
        else:
            self.sent.append((topic, key, value))
            future.set_result(None)
        return future


def worker_context() -> WorkerContext:
    ctx = WorkerContext(settings=Settings.from_env(bootstrap_servers="127.0.0.1:1", topic_prefix="t"))
    ctx.topologies, ctx.gate_state = Table(), Table()
    ctx.graphs = WindowedTable(ctx.settings.window_seconds)
    return ctx


class Event:
    """What ``hold_commit``, ``release_commit`` and ``as_current`` use of a Faust event (a class: weakly
    referenced)."""

    def __init__(self, topic: str, offset: int, partition: int = 0) -> None:
        self.message = SimpleNamespace(tp=TP(topic, partition), topic=topic, partition=partition, offset=offset)


def message(topic: str, name: str, record: dict, offset: int, partition: int = 0) -> RawMessage:
    """An encoded record as the agents receive it, with its event."""
    return RawMessage(topic=topic, partition=partition, offset=offset, key=record["model_id"].encode(),
                      value=encode(name, record), timestamp_ms=0, event=Event(topic, offset, partition))
