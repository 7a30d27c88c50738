"""chaos/report.json: the headline figures summed over the scenarios, plus every scenario's details."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

TOTALS = ("bad_inputs", "dead_lettered", "crashes", "lost", "duplicate_applies")


def scenario_result(checks: dict[str, bool], *, lost: int, crashes: int, duplicate_applies: int,
                    bad_inputs: int = 0, dead_lettered: int = 0, **figures: Any) -> dict[str, Any]:
    """What a scenario's ``run`` returns: ``passed`` (every check held), the checks, the ``TOTALS``
    the report sums, then the scenario's own figures (``recovery_seconds``: {label: seconds})."""
    return {"passed": all(checks.values()), "checks": checks, "bad_inputs": bad_inputs,
            "dead_lettered": dead_lettered, "lost": lost, "crashes": crashes,
            "duplicate_applies": duplicate_applies, **figures}


NOTES = [
    "Counts come from the topics: inputs are matched to the experience archive and the dead-letter topic by "
    "(topic, partition, offset); duplicate_applies counts CommandOutcome APPLIED per decision_id beyond the first.",
    "crashes counts processes and services killed or stopped on purpose (workers, hosts, the registry, the broker).",
    "Workers run with TAMIYO_BROKER_SESSION_TIMEOUT=10 (the default; Faust's own is 60 s): a killed worker's "
    "partitions move after ~10 s, which bounds the takeover time.",
    "With a backlog the worker decides only the newest epoch of a model per batch (older ones are coalesced).",
    "Takeover loss (issue 4), fixed: Faust's post-rebalance seek could reset its read offsets under a batch in "
    "delivery; records the resumed flow then cleared from the agent queues were never read again and were "
    "committed over (acked as a gap, or as a one-record hole Faust's commit check lets pass). "
    "streams/faust_seek.py orders the seek against fetching and delivery (python -m tamiyo.chaos.takeover_loop "
    "reproduces the loss with --without-seek-guard).",
]


def build_report(scenarios: dict[str, dict[str, Any]], started: float, quick: bool, broker: str,
                 security: dict[str, Any] | None = None) -> dict[str, Any]:
    """Top level: ``bad_inputs``, ``dead_lettered``, ``crashes``, ``lost``, ``duplicate_applies`` summed
    over the scenarios that ran; ``recovery_seconds`` the worst recovery time of any scenario, with the
    per-scenario figures under ``recovery_seconds_by_scenario``; ``passed`` only if every check held."""
    totals = {key: sum(int(s.get(key) or 0) for s in scenarios.values()) for key in TOTALS}
    recovery: dict[str, float] = {}
    for name, result in scenarios.items():
        for label, seconds in (result.get("recovery_seconds") or {}).items():
            if seconds is not None:
                recovery[f"{name}.{label}"] = seconds
    failed = {name: [check for check, ok in (r.get("checks") or {}).items() if not ok] or [r.get("error", "error")]
              for name, r in scenarios.items() if not r.get("passed")}
    return {
        **totals,
        "recovery_seconds": max(recovery.values()) if recovery else None,
        "recovery_seconds_by_scenario": recovery,
        "passed": not failed,
        "failed": failed,
        "scenarios": scenarios,
        "security": security or {},
        "notes": NOTES,
        "meta": {
            "quick": quick,
            "broker": broker,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - (time.monotonic() - started))),
            "duration_s": round(time.monotonic() - started, 1),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }


def write_report(report: dict[str, Any], out_path: str | Path) -> Path:
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=False, default=str) + "\n")
    return path


def summary_lines(report: dict[str, Any]) -> list[str]:
    lines = [f"chaos: {'PASSED' if report['passed'] else 'FAILED'} in {report['meta']['duration_s']}s — "
             + ", ".join(f"{k}={report[k]}" for k in TOTALS) + f", recovery_seconds={report['recovery_seconds']}"]
    for name, result in report["scenarios"].items():
        status = "ok" if result.get("passed") else "FAILED " + ", ".join(report["failed"].get(name, []))
        lines.append(f"  {name}: {status} ({result.get('seconds', '?')}s)")
    return lines
