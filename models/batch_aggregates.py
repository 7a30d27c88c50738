"""Per-layer window aggregates of a whole HealthBatch at once, with numpy over its columns.

``batch_layer_aggregates(batch)[layer]`` equals (up to float rounding) folding the batch's signals of
that layer one by one, report by report, with :func:`models.graph.update_layer_aggregate` starting
from nothing; ``fold_batch(layers, batch)`` equals merging those into stored aggregates with
:func:`models.graph.merge_layer_aggregates` (the worker's hot path: no per-layer dict in between).
Values are sanitised as the one-by-one fold sanitises them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.graph import SIGNAL_CLIP, shared_states
from schemas.health_batch import DOUBLE_FIELDS, INT_FIELDS

#: SIGNAL_CLIP as bounds for the float columns, in DOUBLE_FIELDS order (NaN becomes 0 first).
_LOW = np.array([SIGNAL_CLIP[name][0] for name in DOUBLE_FIELDS])[:, None, None]
_HIGH = np.array([SIGNAL_CLIP[name][1] for name in DOUBLE_FIELDS])[:, None, None]
_HEALTH, _LATENCY = DOUBLE_FIELDS.index("health_score"), DOUBLE_FIELDS.index("execution_latency_ms")
#: Fields whose stored value is the latest signal's, as rows of the float and int columns.
_LAST_FLOATS = [DOUBLE_FIELDS.index(name) for name in ("activation_variance", "dead_neuron_ratio",
                                                         "avg_correlation", "gradient_norm")]
_ERRORS, _ACTIVE, _TOTAL = (INT_FIELDS.index(name) for name in ("error_count", "active_seeds", "total_seeds"))


def batch_layer_aggregates(batch: dict[str, Any]) -> dict[str, dict]:
    """The window aggregate of each layer's signals in a (validated) HealthBatch."""
    layers: dict[str, dict] = {}
    fold_batch(layers, batch)
    return layers


def fold_batch(layers: dict[str, dict], batch: dict[str, Any]) -> None:
    """Fold a (validated) HealthBatch into ``layers`` (layer name -> aggregate; entries are replaced,
    never modified): the same as ``merge_layer_aggregates(layers.get(name), batch_layer_aggregates(batch)[name])``
    for each of its layers, written out so that the batch's aggregates are never built as dicts."""
    names = batch["layer_names"]
    width = len(names)
    ts = np.asarray(batch["timestamp_ms"], dtype=np.int64)
    reports = len(ts)
    floats = np.array([batch[name] for name in DOUBLE_FIELDS], dtype=np.float64)
    floats = floats.reshape(len(DOUBLE_FIELDS), reports, width)
    if not np.isfinite(floats).all():  # never for a validated batch
        np.nan_to_num(floats, copy=False, nan=0.0)
    np.maximum(floats, _LOW, out=floats)  # +-inf become the bounds
    np.minimum(floats, _HIGH, out=floats)
    health, latency = floats[_HEALTH], floats[_LATENCY]
    ints = np.array([batch[name] for name in INT_FIELDS], dtype=np.int64).reshape(len(INT_FIELDS), reports, width)
    np.maximum(ints, 0, out=ints)
    d = (ts - ts[0]) / 1000.0  # t of each report on the time origin of the first (as the fold sets it)
    first = int(np.argmin(ts))  # the earliest; ties: the first to arrive
    last = reports - 1 - int(np.argmax(ts[::-1]))  # the latest; ties: the last to arrive
    health_sum, health_min, health_max = health.sum(axis=0).tolist(), health.min(axis=0).tolist(), \
        health.max(axis=0).tolist()
    health_first, health_last, sum_th = health[first].tolist(), health[last].tolist(), (d @ health).tolist()
    latency_sum, error_sum = latency.sum(axis=0).tolist(), ints[_ERRORS].sum(axis=0).tolist()
    last_values = list(zip(*floats[_LAST_FLOATS, last].tolist(), ints[_ACTIVE, last].tolist(),
                           ints[_TOTAL, last].tolist()))
    seeds = ints[_TOTAL].ravel()
    ends = np.cumsum(seeds).tolist()
    seeds = seeds.tolist()
    states = batch["seed_states"]
    t0, first_ts, last_ts = int(ts[0]), int(ts[first]), int(ts[last])
    sum_t, sum_tt = float(d.sum()), float((d * d).sum())
    epoch, step = int(batch["epoch"][last]), int(batch["step"][last])
    for j, name in enumerate(names):
        i = last * width + j
        variance, dead, correlation, gradient, active, total = last_values[j]
        own_states = shared_states(states[ends[i] - seeds[i]:ends[i]])  # enum symbols are str
        a = layers.get(name)
        if a is None:
            layers[name] = {
                "count": reports, "health_sum": health_sum[j], "health_min": health_min[j],
                "health_max": health_max[j], "health_first": health_first[j], "health_last": health_last[j],
                "first_timestamp_ms": first_ts, "last_timestamp_ms": last_ts, "t0_ms": t0,
                "sum_t": sum_t, "sum_tt": sum_tt, "sum_th": sum_th[j], "activation_variance": variance,
                "dead_neuron_ratio": dead, "avg_correlation": correlation, "gradient_norm": gradient,
                "latency_sum_ms": latency_sum[j], "error_sum": error_sum[j], "active_seeds": active,
                "total_seeds": total, "seed_states": own_states, "epoch": epoch, "step": step,
            }
            continue
        # merge_layer_aggregates(a, <this batch's aggregate of the layer>), term by term.
        out = dict(a)
        shift = (t0 - a["t0_ms"]) / 1000.0  # the batch's t onto a's origin
        out["count"] = a["count"] + reports
        out["health_sum"] = a["health_sum"] + health_sum[j]
        out["health_min"] = min(a["health_min"], health_min[j])
        out["health_max"] = max(a["health_max"], health_max[j])
        out["sum_t"] = a["sum_t"] + sum_t + reports * shift
        out["sum_tt"] = a["sum_tt"] + sum_tt + 2.0 * shift * sum_t + reports * shift * shift
        out["sum_th"] = a["sum_th"] + sum_th[j] + shift * health_sum[j]
        out["latency_sum_ms"] = a["latency_sum_ms"] + latency_sum[j]
        out["error_sum"] = a["error_sum"] + error_sum[j]
        if first_ts < a["first_timestamp_ms"]:
            out["first_timestamp_ms"] = first_ts
            out["health_first"] = health_first[j]
        if last_ts >= a["last_timestamp_ms"]:
            out.update(health_last=health_last[j], last_timestamp_ms=last_ts, activation_variance=variance,
                       dead_neuron_ratio=dead, avg_correlation=correlation, gradient_norm=gradient,
                       active_seeds=active, total_seeds=total, seed_states=own_states, epoch=epoch, step=step)
        else:
            out["seed_states"] = shared_states(a.get("seed_states", ()))
        layers[name] = out
