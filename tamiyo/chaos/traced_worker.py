"""``python -m tamiyo.chaos.traced_worker worker``: the normal CLI, with Faust's offset bookkeeping
traced to ``$TAMIYO_FAUST_TRACE`` (``tamiyo.chaos.faust_trace``); ``$TAMIYO_CHAOS_SEEK_DELAY_S`` slows
each seek to the committed offsets down by that much.

With ``TAMIYO_CHAOS_WITHOUT_SEEK_GUARD=1`` the worker runs without ``streams.faust_seek``, i.e. with
Faust's own post-rebalance seek, to reproduce the message loss the guard prevents (issue 4).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> int:
    from tamiyo.chaos.faust_trace import install

    install(Path(os.environ["TAMIYO_FAUST_TRACE"]), float(os.environ.get("TAMIYO_CHAOS_SEEK_DELAY_S") or 0))
    if os.environ.get("TAMIYO_CHAOS_WITHOUT_SEEK_GUARD") == "1":
        import streams.faust_seek as faust_seek

        faust_seek._installed = True  # create_app then leaves Faust's seek as it is
    from tamiyo.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
