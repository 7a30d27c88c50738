"""HealthBatch: several HealthReports of one model and run as columns, and back to HealthSignals.

A batch of R reports over the same L layers carries ``layer_names`` once, ``epoch``/``step``/
``timestamp_ms`` once per report, and every other HealthSignal field as one array of R * L items,
report-major (item ``r * L + j`` is report r's signal for layer j). ``seed_states`` is every signal's
list concatenated; signal i owns ``total_seeds[i]`` of them.
"""

from __future__ import annotations

from typing import Any, Sequence

#: Per-report fields (the same for every signal of one report).
REPORT_FIELDS = ("epoch", "step", "timestamp_ms")
#: Per-signal numeric fields: doubles, then ints.
DOUBLE_FIELDS = ("health_score", "activation_variance", "dead_neuron_ratio", "avg_correlation", "gradient_norm",
                 "execution_latency_ms")
INT_FIELDS = ("error_count", "active_seeds", "total_seeds")


class BatchShapeError(ValueError):
    """Reports that cannot share one batch (different layers, models or runs, or a step that differs
    between the signals of one report)."""


def health_batch(model_id: str, run_id: str, reports: Sequence[Sequence[dict[str, Any]]]) -> dict[str, Any]:
    """The HealthBatch record of ``reports`` (each one step's HealthSignals, one per layer, in the same
    layer order in every report)."""
    if not reports or not reports[0]:
        raise BatchShapeError("a HealthBatch needs at least one report with at least one signal")
    layer_names = [s["layer_name"] for s in reports[0]]
    record: dict[str, Any] = {"model_id": model_id, "run_id": run_id, "layer_names": layer_names}
    for name in REPORT_FIELDS:
        record[name] = []
    for name in DOUBLE_FIELDS + INT_FIELDS:
        record[name] = []
    states: list[str] = []
    for r, report in enumerate(reports):
        if [s["layer_name"] for s in report] != layer_names:
            raise BatchShapeError(f"report {r} has layers {[s['layer_name'] for s in report]}, report 0 {layer_names}")
        first = report[0]
        for name in REPORT_FIELDS:
            if any(s[name] != first[name] for s in report):
                raise BatchShapeError(f"the signals of report {r} differ in {name}")
            record[name].append(first[name])
        for s in report:
            if s["model_id"] != model_id or s["run_id"] != run_id:
                raise BatchShapeError(f"report {r} has a signal of {s['model_id']!r} run {s['run_id']!r}")
            for name in DOUBLE_FIELDS + INT_FIELDS:
                record[name].append(s[name])
            states.extend(s["seed_states"])
    record["seed_states"] = states
    return record


def batch_size(record: dict[str, Any]) -> int:
    """The number of HealthSignals a (validated) HealthBatch carries."""
    return len(record["epoch"]) * len(record["layer_names"])


def batch_signals(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The HealthSignal records of a HealthBatch, report by report (numpy or list columns)."""
    layers = record["layer_names"]
    width = len(layers)
    columns = {name: _as_list(record[name]) for name in REPORT_FIELDS + DOUBLE_FIELDS + INT_FIELDS}
    states = [str(s) for s in record["seed_states"]]
    out = []
    used = 0
    for r in range(len(columns["epoch"])):
        for j, layer in enumerate(layers):
            i = r * width + j
            seeds = int(columns["total_seeds"][i])
            signal = {"model_id": record["model_id"], "run_id": record["run_id"], "layer_name": layer}
            signal.update({name: columns[name][r] for name in REPORT_FIELDS})
            signal.update({name: columns[name][i] for name in DOUBLE_FIELDS + INT_FIELDS})
            signal["seed_states"] = states[used:used + seeds]
            used += seeds
            out.append(signal)
    return out


def _as_list(values: Any) -> list:
    return values.tolist() if hasattr(values, "tolist") else list(values)
