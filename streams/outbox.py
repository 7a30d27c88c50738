"""Batched sends through the Faust producer: enqueue fast, await every delivery before acking input."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable


class Outbox:
    """Collects delivery futures of one input batch; ``flush`` waits for all of them.

    Awaiting delivery before the batch's input offsets are acked is what makes processing
    at-least-once: a crash can repeat output, never lose it.
    """

    def __init__(self, producer: Any) -> None:
        self._producer = producer
        self._pending: list[Awaitable[Any]] = []

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        future = await self._producer.send(topic, key, value, None, None, headers)
        self._pending.append(future)

    async def flush(self) -> int:
        """Wait for every pending delivery; returns how many were delivered."""
        pending, self._pending = self._pending, []
        if pending:
            await asyncio.gather(*pending)
        return len(pending)
