"""The experience topic: every valid message of every Tamiyo topic, original bytes plus provenance."""

from __future__ import annotations

from streams.intake import RawMessage
from streams.outbox import Outbox

TYPE_HEADER = "tamiyo.type"
SOURCE_HEADER = "tamiyo.source"


def provenance(message_type: str, raw: RawMessage | None = None) -> list[tuple[str, bytes]]:
    headers = [(TYPE_HEADER, message_type.encode())]
    if raw is not None:
        headers.append((SOURCE_HEADER, f"{raw.topic}/{raw.partition}/{raw.offset}".encode()))
    return headers


async def archive(outbox: Outbox, experience_topic: str, message_type: str, raw: RawMessage) -> None:
    """Copy an accepted input message to the experience topic unchanged."""
    await outbox.send(experience_topic, raw.key, raw.value or b"", provenance(message_type, raw))


def register(app, ctx) -> object:  # type: ignore[no-untyped-def]
    """The archive agent for the output topic ``commands`` (inputs are archived as they are validated)."""
    from streams.intake import Accepted, accept, from_faust_event

    settings = ctx.settings
    topics = settings.topics
    source = app.topic(topics.commands, key_serializer="raw", value_serializer="raw")
    expected = frozenset({"AdaptationCommand"})

    @app.agent(source, name="archive")
    async def archive_commands(stream):  # type: ignore[no-untyped-def]
        from streams.deadletter import send_dead_letter

        async for events in stream.take_events(1000, within=0.05):
            outbox = Outbox(app.producer)
            for event in events:
                raw = from_faust_event(event)
                result = accept(raw, expected, settings.max_message_bytes)
                if isinstance(result, Accepted):
                    await archive(outbox, topics.experience, result.name, raw)
                    ctx.counters.archived += 1
                else:
                    ctx.counters.dead_letters += 1
                    await send_dead_letter(outbox, topics.deadletter, result, settings.dead_letter_value_bytes)
            await outbox.flush()

    return archive_commands
