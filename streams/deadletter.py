"""Rejected input goes to the dead-letter topic with its reason and origin."""

from __future__ import annotations

import logging
import time

from schemas import encode
from streams.intake import Rejected
from streams.outbox import Outbox

log = logging.getLogger(__name__)


def dead_letter_value(rejected: Rejected, value_limit: int) -> bytes:
    raw = rejected.raw
    value = raw.value or b""
    return encode("DeadLetter", {
        "reason": rejected.reason,
        "error_kind": rejected.kind,
        "source_topic": raw.topic,
        "partition": raw.partition,
        "offset": raw.offset,
        "timestamp_ms": int(time.time() * 1000),
        "key": raw.key[:1024] if raw.key is not None else None,
        "value": value[:value_limit],
        "value_size": len(value),
    })


async def send_dead_letter(outbox: Outbox, topic: str, rejected: Rejected, value_limit: int) -> None:
    log.warning("dead-letter %s[%d]@%d: %s: %s", rejected.raw.topic, rejected.raw.partition,
                rejected.raw.offset, rejected.kind, rejected.reason)
    headers = [("tamiyo.error_kind", rejected.kind.encode())]
    await outbox.send(topic, rejected.raw.key or None, dead_letter_value(rejected, value_limit), headers)
