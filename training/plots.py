"""Figures for a training run: learning curves and OPE estimates with intervals.

Uses matplotlib's object API (``Figure`` with the Agg canvas), never pyplot: no global backend
switch, no GUI, safe in worker threads. ``mlflow.log_figure`` accepts the returned figures.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from training.ope import OPEReport


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def learning_curves(history: Mapping[str, Sequence[float]], title: str = "learning curves") -> Figure:
    """One panel per series (``{"awr/policy/loss": [per-epoch values], ...}``), x = epoch."""
    names = [name for name, values in history.items() if len(values)]
    cols = min(3, max(len(names), 1))
    rows = max(math.ceil(len(names) / cols), 1)
    fig = _figure(4.0 * cols, 2.8 * rows)
    fig.suptitle(title)
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        values = list(history[name])
        ax.plot(range(1, len(values) + 1), values, marker="." if len(values) < 40 else None)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    return fig


def ope_intervals(reports: Mapping[str, OPEReport], title: str = "off-policy value on held-out decisions") -> Figure:
    """Point estimate and confidence interval per estimator (x groups) and policy (colours)."""
    found = {name for report in reports.values() for name in report.estimates}
    estimators = [n for n in ("ips", "snips", "dr") if n in found] + sorted(found - {"ips", "snips", "dr"})
    fig = _figure(1.6 + 1.8 * max(len(estimators), 1), 3.6)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(len(reports), 1)
    for j, (policy, report) in enumerate(reports.items()):
        xs, ys, lo, hi = [], [], [], []
        for i, name in enumerate(estimators):
            if name in report.estimates:
                e = report.estimates[name]
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(e.value)
                lo.append(e.value - e.low)
                hi.append(e.high - e.value)
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", capsize=4,
                    label=f"{policy} (ESS {report.effective_sample_size:.0f})")
    ax.set_xticks(range(len(estimators)), estimators)
    ax.set_ylabel("estimated reward per decision")
    ax.set_title(title, fontsize=10)
    ax.axhline(0.0, color="grey", lw=0.5)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def save_png(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
