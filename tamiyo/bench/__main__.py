"""``python -m tamiyo.bench --out bench/results.json [--only GROUP_OR_METRIC ...]``."""

from __future__ import annotations

import argparse
import logging
import sys

from tamiyo.bench import run_bench
from tamiyo.bench.runner import ALIASES, GROUPS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tamiyo bench", description=__doc__)
    parser.add_argument("--out", default="bench/results.json", help="results.json path (results.md goes next to it)")
    parser.add_argument("--only", nargs="*", default=None,
                        help=f"groups ({', '.join([*ALIASES, *GROUPS])}) or metric names")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data = run_bench(args.out, args.only)
    return 0 if data["metrics"] else 1  # a missed target is a finding in the report, not a crash


if __name__ == "__main__":
    sys.exit(main())
