"""Reliability scenarios ("chaos") on a real Apache Kafka: bad input, crashes and outages lose nothing.

``run_chaos(out_path)`` runs every scenario (or those in ``only``) against ``KAFKA_BOOTSTRAP_SERVERS``
or, when unset, an embedded Apache Kafka node, and writes a JSON report (see ``report.py``).
Scenarios, one module each:

* ``bad_input``        — ≥1,000 malformed messages of 14 kinds interleaved with a valid stream
* ``schema_evolution`` — a worker on evolved schemas reads messages of the older version
* ``worker_crash``     — kill -9 a worker mid-stream and restart it; kill one of two workers
* ``host_crash``       — hosts die mid-run; the episodes end with the default reward
* ``registry_outage``  — the MLflow server stops and comes back; bad versions are refused
* ``load``             — many simulated models for minutes: worker memory and consumer lag
* ``broker_restart``   — the Kafka broker restarts (graceful, then kill -9) under load

Each ``run(env, quick=False) -> dict`` returns ``passed``, ``checks`` and its figures; the
``quick`` versions are the ones the test suite runs (tests/chaos/).

Not a scenario but a reproduction: ``python -m tamiyo.chaos.takeover_loop`` repeats the takeover
under load with traced workers and explains any lost message from Faust's offset bookkeeping.
"""

from __future__ import annotations

import importlib
import time
import traceback
from pathlib import Path
from typing import Any, Iterable

SCENARIOS = ("bad_input", "schema_evolution", "worker_crash", "host_crash", "registry_outage", "load",
             "broker_restart")


def run_scenario(name: str, env: Any, quick: bool = False) -> dict[str, Any]:
    """One scenario; an exception becomes a failed result with the traceback (the run goes on)."""
    from tamiyo.chaos.harness import progress

    if name not in SCENARIOS:
        raise ValueError(f"unknown chaos scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    module = importlib.import_module(f"tamiyo.chaos.{name}")
    progress(f"scenario {name} starting ({'quick' if quick else 'full'})")
    started = time.monotonic()
    try:
        result = module.run(env, quick=quick)
    except Exception as exc:
        result = {"passed": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(),
                  "seconds": round(time.monotonic() - started, 1)}
    finally:
        for child in list(env.children):  # nothing a scenario started outlives it
            child.stop(10)
        env.children.clear()
    progress(f"scenario {name}: {'passed' if result.get('passed') else 'FAILED'} in {result.get('seconds')}s")
    return result


def run_chaos(out_path: str | Path, only: Iterable[str] | None = None, *, quick: bool = False,
              bootstrap: str | None = None, workdir: str | Path | None = None) -> dict[str, Any]:
    """Run the scenarios and write the report to ``out_path``; returns the report.

    ``only``: scenario names (default: all, in SCENARIOS order). ``quick``: the scaled-down versions
    the tests run. ``bootstrap``: an existing broker (default: $KAFKA_BOOTSTRAP_SERVERS, else an
    embedded Apache Kafka). ``workdir``: keep logs and data there (default: a temporary folder,
    removed afterwards). The report's ``passed`` is False when any check of any scenario failed.
    """
    from tamiyo.chaos import security
    from tamiyo.chaos.harness import ChaosEnv
    from tamiyo.chaos.report import build_report, summary_lines, write_report

    names = list(SCENARIOS) if not only else [n.strip() for n in only if n.strip()]
    for name in names:
        if name not in SCENARIOS:
            raise ValueError(f"unknown chaos scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    started = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    with ChaosEnv(Path(workdir) if workdir else None, bootstrap, keep=workdir is not None) as env:
        broker = "embedded Apache Kafka" if env.broker is not None else f"external ({env.bootstrap})"
        for name in names:
            results[name] = run_scenario(name, env, quick)
            report = build_report(results, started, quick, broker, security.summary())
            write_report(report, out_path)  # after every scenario: a partial report survives a crash
    for line in summary_lines(report):
        print(line, flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m tamiyo.chaos [--out chaos/report.json] [--only a,b] [--quick]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="tamiyo chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="chaos/report.json")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(SCENARIOS)}")
    parser.add_argument("--quick", action="store_true", help="the scaled-down versions the tests run")
    parser.add_argument("--bootstrap", default=None, help="an existing broker (default: embedded Apache Kafka)")
    parser.add_argument("--workdir", default=None, help="keep logs and data in this folder")
    args = parser.parse_args(argv)
    report = run_chaos(args.out, args.only.split(",") if args.only else None, quick=args.quick,
                       bootstrap=args.bootstrap, workdir=args.workdir)
    return 0 if report["passed"] else 1
