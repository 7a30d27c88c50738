"""Median-of-runs measurement, targets with pass/fail, progress lines, results.json and results.md.

A metric is the median of ``runs`` measurements plus their min and max. A target is a comparison of
that median with a number or with another metric times a factor (``ingest >= 10 x naive``).
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

OPS = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b}


@dataclass(frozen=True)
class Target:
    """``value <op> threshold``, or ``value <op> factor * results[ref]`` when ``ref`` is set."""

    op: str
    threshold: float
    ref: str | None = None

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"target op must be one of {sorted(OPS)}, not {self.op!r}")

    def bound(self, metrics: dict[str, dict[str, Any]]) -> float | None:
        """The number the value is compared with; None when the reference metric is missing."""
        if self.ref is None:
            return self.threshold
        ref = metrics.get(self.ref)
        if ref is None or not _finite(ref.get("value")):
            return None
        return self.threshold * ref["value"]

    def describe(self) -> str:
        if self.ref is None:
            return f"{self.op} {_fmt(self.threshold)}"
        return f"{self.op} {_fmt(self.threshold)}× {self.ref}"


def _load() -> float | None:
    """The 1-minute load average when the figure was recorded (other work on the machine skews it)."""
    try:
        import os

        return round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover
        return None


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _fmt(x: Any) -> str:
    if not _finite(x):
        return str(x)
    ax = abs(x)
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 0.1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def summarize(values: Iterable[float]) -> dict[str, float | int]:
    """Median, min, max and count of the finite values (at least one is needed)."""
    vals = [float(v) for v in values if _finite(v)]
    if not vals:
        raise ValueError("no finite measurements to summarise")
    return {"value": statistics.median(vals), "runs": len(vals), "min": min(vals), "max": max(vals)}


def progress(message: str) -> None:
    """One progress line on stderr with the time since the bench started."""
    print(f"[bench {time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


_T0 = time.monotonic()


@dataclass
class Results:
    """Metrics by name (insertion order is report order), notes, and the targets to judge them by."""

    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    targets: dict[str, Target] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)  # metric name -> why it is absent

    def add(self, name: str, values: Iterable[float], unit: str, target: Target | None = None,
            **extra: Any) -> dict[str, Any]:
        """Record a metric as the median of ``values``; ``extra`` goes into its JSON entry as is."""
        entry: dict[str, Any] = {**summarize(values), "unit": unit, **extra, "load_avg_1m": _load(),
                                 "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.metrics[name] = entry
        self.missing.pop(name, None)
        if target is not None:
            self.targets[name] = target
        progress(f"{name} = {_fmt(entry['value'])} {unit} (min {_fmt(entry['min'])}, max {_fmt(entry['max'])}, "
                 f"{entry['runs']} runs){self._verdict_text(name)}")
        return entry

    def skip(self, name: str, reason: str, target: Target | None = None) -> None:
        """A metric that was not measured, with the reason (shown in results.md)."""
        self.missing[name] = reason
        if target is not None:
            self.targets[name] = target
        progress(f"{name}: not measured: {reason}")

    def note(self, text: str) -> None:
        self.notes.append(text)

    def verdict(self, name: str) -> bool | None:
        """True/False against the target, None when there is no target or nothing to compare."""
        target = self.targets.get(name)
        entry = self.metrics.get(name)
        if target is None or entry is None or not _finite(entry.get("value")):
            return None
        bound = target.bound(self.metrics)
        if bound is None:
            return None
        return bool(OPS[target.op](entry["value"], bound))

    def _verdict_text(self, name: str) -> str:
        v = self.verdict(name)
        return "" if v is None else f" target {self.targets[name].describe()}: {'PASS' if v else 'FAIL'}"

    def as_dict(self) -> dict[str, Any]:
        metrics: dict[str, dict[str, Any]] = {}
        for name, entry in self.metrics.items():
            out = dict(entry)
            target = self.targets.get(name)
            if target is not None:
                out["target"] = target.describe()
                bound = target.bound(self.metrics)
                if bound is not None:
                    out["target_value"] = bound
                out["pass"] = self.verdict(name)
            metrics[name] = out
        return {
            "metrics": metrics,
            "not_measured": dict(self.missing),
            "notes": list(self.notes),
            "machine": machine_info(),
        }


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    try:
        import os

        info["cpus"] = os.cpu_count()
    except Exception:  # pragma: no cover
        pass
    try:
        import torch

        info["torch"] = torch.__version__
    except Exception:  # pragma: no cover
        pass
    return info


def markdown(data: dict[str, Any]) -> str:
    """results.md: one table row per metric (value, min–max, runs, target, verdict), then notes."""
    lines = ["# Tamiyo benchmarks", ""]
    machine = data.get("machine") or {}
    if machine:
        lines += ["Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()), ""]
    lines += ["| metric | value | unit | min – max | runs | target | result |",
              "|---|---:|---|---|---:|---|---|"]
    for name, m in data.get("metrics", {}).items():
        verdict = {True: "PASS", False: "**FAIL**", None: ""}[m.get("pass")]
        lines.append(f"| {name} | {_fmt(m['value'])} | {m['unit']} | {_fmt(m['min'])} – {_fmt(m['max'])} | "
                     f"{m['runs']} | {m.get('target', '')} | {verdict} |")
    missing = data.get("not_measured") or {}
    for name, reason in missing.items():
        lines.append(f"| {name} | – | | | 0 | | not measured |")
    if missing:
        lines += ["", "## Not measured", ""]
        lines += [f"- **{name}**: {reason}" for name, reason in missing.items()]
    details = {name: {k: v for k, v in m.items()
                      if k not in ("value", "unit", "runs", "min", "max", "target", "target_value", "pass")}
               for name, m in data.get("metrics", {}).items()}
    details = {k: v for k, v in details.items() if v}
    if details:
        lines += ["", "## Conditions", ""]
        for name, extra in details.items():
            lines.append(f"- **{name}**: " + ", ".join(f"{k}={_detail(v)}" for k, v in extra.items()))
    if data.get("notes"):
        lines += ["", "## Notes", ""]
        lines += [f"- {n}" for n in data["notes"]]
    return "\n".join(lines) + "\n"


def _detail(v: Any) -> str:
    if isinstance(v, float):
        return _fmt(v)
    if isinstance(v, list) and all(isinstance(x, float) for x in v):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def write_results(results: Results | dict[str, Any], out_path: str | Path) -> dict[str, Any]:
    """Write ``out_path`` (JSON) and the markdown table next to it (same name, ``.md``)."""
    data = results.as_dict() if isinstance(results, Results) else results
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")
    out.with_suffix(".md").write_text(markdown(data))
    return data


def _json_default(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def repeat(fn: Callable[[], float], runs: int, label: str = "") -> list[float]:
    """Call ``fn`` ``runs`` times, printing each measurement."""
    values = []
    for i in range(runs):
        v = fn()
        values.append(v)
        if label:
            progress(f"  {label} run {i + 1}/{runs}: {_fmt(v)}")
    return values


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    if not values:
        raise ValueError("no values")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)
