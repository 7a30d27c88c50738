"""Batch processing that never drops input: retry one by one, dead-letter what still fails.

Faust acks every event of a ``take_events`` batch when the loop body ends, even when it raises,
and its supervisor then restarts the agent: an exception escaping an agent loses the batch.
So a failed batch is re-run one message at a time; a message that fails alone goes to the
dead-letter topic with the exception as its reason. If even that cannot be delivered (the broker
is gone), the process exits at once, before Faust can commit, and a restart re-reads the batch.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Awaitable, Callable, Sequence

from streams.deadletter import send_dead_letter
from streams.intake import RawMessage, Rejected, resolve_schema_ids
from streams.outbox import Outbox

log = logging.getLogger(__name__)

Processor = Callable[[Any, Outbox, list[RawMessage]], Awaitable[None]]
EXIT_UNDELIVERABLE = 70


async def process_safely(ctx: Any, producer: Any, process: Processor, messages: Sequence[RawMessage]) -> None:
    await resolve_schema_ids(messages)
    outbox = Outbox(producer)
    try:
        await process(ctx, outbox, list(messages))
        await outbox.flush()
        return
    except Exception:
        log.exception("batch of %d messages failed; retrying one at a time", len(messages))
    for raw in messages:
        single = Outbox(producer)
        try:
            await process(ctx, single, [raw])
            await single.flush()
        except Exception as exc:
            await _dead_letter_or_exit(ctx, producer, raw, exc)


async def _dead_letter_or_exit(ctx: Any, producer: Any, raw: RawMessage, exc: Exception) -> None:
    settings = ctx.settings
    rejected = Rejected(raw, "processing_error", f"{type(exc).__name__}: {exc}")
    outbox = Outbox(producer)
    try:
        await send_dead_letter(outbox, settings.topics.deadletter, rejected, settings.dead_letter_value_bytes)
        await outbox.flush()
        ctx.counters.dead_letters += 1
    except Exception:
        log.critical("cannot deliver to the dead-letter topic; exiting before the batch is committed",
                     exc_info=True)
        os._exit(EXIT_UNDELIVERABLE)
