"""``tamiyo bench``: the performance figures of this machine against Tamiyo's targets.

``run_bench(out_path, only)`` runs the benchmarks (all, or the groups/metrics in ``only``) and
writes ``out_path`` (results.json: {"metrics": {name: {value, unit, runs, min, max, target, pass,
...}}, "not_measured": {...}, "notes": [...]}) plus the markdown table next to it (results.md).
Also runnable as ``python -m tamiyo.bench --out bench/results.json [--only ingest decision]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run_bench(out_path: str | Path, only: list[str] | None = None) -> dict[str, Any]:
    from tamiyo.bench.runner import run_bench as _run

    return _run(out_path, only)


__all__ = ["run_bench"]
