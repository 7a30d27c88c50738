"""Turn one raw Kafka message into a decoded, validated record, or a reason to dead-letter it."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Sequence

from schemas import DecodeError
from schemas.codec import resolve_ids, unresolved_ids
from schemas.numeric_arrays import decode_arrays
from streams.validation import validate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RawMessage:
    """The parts of a Kafka message the intake needs (broker-agnostic)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    event: Any = None  # the Faust event, when the message came through Faust


@dataclass(frozen=True)
class Accepted:
    raw: RawMessage
    name: str
    record: dict[str, Any]


@dataclass(frozen=True)
class Rejected:
    raw: RawMessage
    kind: str
    reason: str


def from_faust_event(event: Any) -> RawMessage:
    message = event.message
    return RawMessage(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        timestamp_ms=int((message.timestamp or 0) * 1000),
        event=event,
    )


async def resolve_schema_ids(messages: Sequence[RawMessage]) -> None:
    """Look up Confluent schema ids never seen before in a thread, so that ``accept`` decodes from
    the cache and the event loop never waits on the registry. A no-op without a registry."""
    ids = unresolved_ids(m.value for m in messages)
    if not ids:
        return
    try:
        await asyncio.to_thread(resolve_ids, ids)
    except Exception:  # accept() then rejects those messages as unresolved
        log.exception("resolving schema ids %s failed", sorted(ids))


def accept(raw: RawMessage, expected: frozenset[str], max_bytes: int) -> Accepted | Rejected:
    """Check size, decode, check the record type is expected here, validate, check key == model_id."""
    size = len(raw.value or b"")
    if size > max_bytes:
        return Rejected(raw, "oversized", f"value is {size} bytes, limit is {max_bytes}")
    if not raw.key:
        return Rejected(raw, "empty_key", "message key is empty; it must be the model id")
    try:
        # ids were resolved by resolve_schema_ids; a HealthBatch's float columns come as numpy arrays
        decoded = decode_arrays(raw.value, lookup=False)
        if decoded.name not in expected:
            return Rejected(raw, "wrong_type", f"{decoded.name} does not belong on {raw.topic}")
        validate(decoded.name, decoded.value)
    except DecodeError as exc:
        return Rejected(raw, exc.kind, exc.reason)
    model_id = decoded.value.get("model_id")
    if model_id is not None and raw.key != model_id.encode():
        shown = raw.key[:64].decode("utf-8", "replace")
        return Rejected(raw, "key_mismatch", f"key {shown!r} disagrees with model_id {model_id!r}")
    return Accepted(raw, decoded.name, decoded.value)
