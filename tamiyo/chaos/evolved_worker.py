"""``python -m tamiyo.chaos.evolved_worker worker``: the normal CLI, but reading schemas from
``$TAMIYO_CHAOS_SCHEMA_DIR`` — a copy of ``schemas/avro`` in which some schemas gained a field.

Used by the schema-evolution scenario to run a worker whose *current* schemas are newer than what
the producers write. ``schemas.codec.decode``/``encode`` look the registry up at call time, so
replacing ``schemas.codec.registry`` before anything decodes is enough.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> int:
    import schemas.codec as codec

    evolved = codec.SchemaRegistry(Path(os.environ["TAMIYO_CHAOS_SCHEMA_DIR"]))
    codec.registry = lambda: evolved  # type: ignore[assignment]
    from tamiyo.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
