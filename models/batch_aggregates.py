"""Per-layer window aggregates of a whole HealthBatch at once, with numpy over its columns.

``batch_layer_aggregates(batch)[layer]`` equals (up to float rounding) folding the batch's signals of
that layer one by one, report by report, with :func:`models.graph.update_layer_aggregate` starting
from nothing; merge it into a stored aggregate with :func:`models.graph.merge_layer_aggregates`.
Values are sanitised as the one-by-one fold sanitises them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: The per-signal float fields, and the [lower, upper] bounds the one-by-one fold clips each to (NaN becomes 0).
_FIELDS = ("health_score", "activation_variance", "dead_neuron_ratio", "avg_correlation", "gradient_norm",
           "execution_latency_ms")
_LOW = np.array([0.0, 0.0, 0.0, -1.0, 0.0, 0.0])[:, None, None]
_HIGH = np.array([1.0, 1e30, 1.0, 1.0, 1e30, 1e12])[:, None, None]
_INTS = ("error_count", "active_seeds", "total_seeds")
#: Fields whose stored value is the latest signal's.
_LAST = ("activation_variance", "dead_neuron_ratio", "avg_correlation", "gradient_norm")


def batch_layer_aggregates(batch: dict[str, Any]) -> dict[str, dict]:
    """The window aggregate of each layer's signals in a (validated) HealthBatch."""
    names = batch["layer_names"]
    width = len(names)
    ts = np.asarray(batch["timestamp_ms"], dtype=np.int64)
    reports = len(ts)
    floats = np.array([batch[name] for name in _FIELDS], dtype=np.float64).reshape(len(_FIELDS), reports, width)
    np.nan_to_num(floats, copy=False, nan=0.0)
    np.clip(floats, _LOW, _HIGH, out=floats)  # +-inf become the bounds
    health, latency = floats[0], floats[5]
    ints = np.maximum(np.array([batch[name] for name in _INTS], dtype=np.int64), 0).reshape(len(_INTS), reports, width)
    d = (ts - ts[0]) / 1000.0  # t of each report on the time origin of the first (as the fold sets it)
    first = int(np.argmin(ts))  # the earliest; ties: the first to arrive
    last = reports - 1 - int(np.argmax(ts[::-1]))  # the latest; ties: the last to arrive
    columns = {
        "health_sum": health.sum(axis=0), "health_min": health.min(axis=0), "health_max": health.max(axis=0),
        "health_first": health[first], "health_last": health[last], "sum_th": d @ health,
        "latency_sum_ms": latency.sum(axis=0), "error_sum": ints[0].sum(axis=0),
        "active_seeds": ints[1, last], "total_seeds": ints[2, last],
    }
    lists = [(key, column.tolist()) for key, column in columns.items()]
    lists += [(key, values) for key, values in zip(_LAST, floats[1:5, last].tolist())]
    seeds = ints[2].ravel()
    ends = np.cumsum(seeds).tolist()
    seeds = seeds.tolist()
    states = batch["seed_states"]
    shared = {"count": reports, "first_timestamp_ms": int(ts[first]), "last_timestamp_ms": int(ts[last]),
              "t0_ms": int(ts[0]), "sum_t": float(d.sum()), "sum_tt": float((d * d).sum()),
              "epoch": int(batch["epoch"][last]), "step": int(batch["step"][last])}
    out = {}
    for j, name in enumerate(names):
        i = last * width + j
        agg = dict(shared)
        for key, values in lists:
            agg[key] = values[j]
        agg["seed_states"] = [str(s) for s in states[ends[i] - seeds[i]:ends[i]]]
        out[name] = agg
    return out
