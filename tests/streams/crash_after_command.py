"""``python -m tests.streams.crash_after_command worker``: the normal CLI, except that the process
dies (``os._exit(86)``, like ``kill -9``: nothing is flushed or committed) right after the first
outbox flush that delivered an AdaptationCommand — after a decision is delivered and before its
gate state is written: the window in which a crash makes the next worker decide that epoch again."""

from __future__ import annotations

import os
import sys
from typing import Any

EXIT_CODE = 86


def install(commands_topic: str) -> None:
    from streams.outbox import Outbox

    send, flush = Outbox.send, Outbox.flush

    async def sending(self: Outbox, topic: str, key: bytes | None, value: bytes, headers: Any = None) -> None:
        if topic == commands_topic:
            self.__dict__["carries_command"] = True
        await send(self, topic, key, value, headers)

    async def flushing(self: Outbox) -> int:
        sent = await flush(self)
        if self.__dict__.get("carries_command"):
            print("crash_after_command: a command was delivered; dying before the gate state is written",
                  file=sys.stderr, flush=True)
            os._exit(EXIT_CODE)
        return sent

    Outbox.send, Outbox.flush = sending, flushing  # type: ignore[method-assign]


def main() -> int:
    from tamiyo.cli import main as cli_main
    from tamiyo.config import Settings

    install(Settings.from_env().topics.commands)
    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
