"""The experience topic: every valid message of every Tamiyo topic, original bytes plus provenance."""

from __future__ import annotations

from typing import TYPE_CHECKING

from streams.intake import RawMessage
from streams.outbox import Outbox

if TYPE_CHECKING:
    from streams.context import WorkerContext

TYPE_HEADER = "tamiyo.type"
SOURCE_HEADER = "tamiyo.source"


def provenance(message_type: str, raw: RawMessage | None = None) -> list[tuple[str, bytes]]:
    headers = [(TYPE_HEADER, message_type.encode())]
    if raw is not None:
        headers.append((SOURCE_HEADER, f"{raw.topic}/{raw.partition}/{raw.offset}".encode()))
    return headers


async def archive(ctx: WorkerContext, outbox: Outbox, message_type: str, raw: RawMessage) -> None:
    """Copy an accepted input message to the experience topic unchanged, and count it
    (``ctx``: the worker's context, for its settings and counters)."""
    await outbox.send(ctx.settings.topics.experience, raw.key, raw.value or b"", provenance(message_type, raw))
    ctx.counters.archived += 1



COMMANDS = frozenset({"AdaptationCommand"})


async def process_batch(ctx, outbox: Outbox, messages: list) -> None:  # type: ignore[no-untyped-def]
    """Archive valid commands; dead-letter anything else that was written to the commands topic."""
    from streams.deadletter import send_dead_letter
    from streams.intake import Accepted, accept

    settings = ctx.settings
    for raw in messages:
        result = accept(raw, COMMANDS, settings.max_message_bytes)
        if isinstance(result, Accepted):
            await archive(ctx, outbox, result.name, raw)
        else:
            ctx.counters.dead_letters += 1
            await send_dead_letter(outbox, settings.topics.deadletter, result, settings.dead_letter_value_bytes)


def register(app, ctx) -> object:  # type: ignore[no-untyped-def]
    """The archive agent for the output topic ``commands`` (inputs are archived as they are validated)."""
    from streams.intake import from_faust_event
    from streams.resilience import process_safely

    source = app.topic(ctx.settings.topics.commands, key_serializer="raw", value_serializer="raw")

    @app.agent(source, name="archive")
    async def archive_commands(stream):  # type: ignore[no-untyped-def]
        async for events in stream.take_events(1000, within=0.05):
            await process_safely(ctx, app.producer, process_batch, [from_faust_event(e) for e in events])

    return archive_commands
