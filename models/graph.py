"""Per-model graph state: O(1) health-window aggregates and the policy's input graph.

Everything stored in a stream table here is a plain JSON-serialisable dict (str/int/float/
bool/list/dict only). ``build_graph`` turns a topology record plus those aggregates into a
:class:`ModelGraph` with numpy arrays, which is what the policy consumes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Collection, Sequence

import numpy as np

FEATURE_SPEC_VERSION = "v1"

#: Node features, in column order. All are finite floats; the scale of each is noted.
FEATURE_NAMES: tuple[str, ...] = (
    "health_mean",  # window mean of health_score, [0, 1]
    "health_min",  # window minimum, [0, 1]
    "health_last",  # most recent (by timestamp), [0, 1]
    "health_trend",  # least-squares health change across the window, [-1, 1]
    "log_activation_variance",  # log1p(last activation_variance)
    "dead_neuron_ratio",  # last, [0, 1]
    "avg_correlation",  # last, [-1, 1]
    "log_gradient_norm",  # log1p(last gradient_norm)
    "log_latency_ms",  # log1p(window mean execution_latency_ms)
    "log_error_count",  # log1p(errors summed over the window)
    "active_seed_fraction",  # active_seeds / total_seeds, [0, 1]
    "dormant_seed_fraction",  # DORMANT seeds / seeds, [0, 1]
    "log_parameter_count",  # log1p(topology parameter_count)
    "log_input_size",  # log1p(topology input_size)
    "log_output_size",  # log1p(topology output_size)
    "relative_depth",  # position in topology order, 0 (first) .. 1 (last)
    "epochs_since_adapted",  # min(epoch - last adaptation, CAP) / CAP; 1.0 if never adapted
    "ever_adapted",  # 1.0 if this layer was ever adapted in this run
    "has_data",  # 1.0 if the window holds at least one signal for this layer
)
FEATURE_INDEX: dict[str, int] = {name: i for i, name in enumerate(FEATURE_NAMES)}

#: Cap (in epochs) for ``epochs_since_adapted`` before normalising to [0, 1].
EPOCHS_SINCE_ADAPTED_CAP = 10
#: Every feature is clipped to [-FEATURE_CLIP, FEATURE_CLIP] as a last line of defence.
FEATURE_CLIP = 50.0

#: Feature values for a layer with no signal in the window (has_data=0): "no evidence of a
#: problem" — healthy, nothing dead, no errors, no dormant seed known.
NEUTRAL_FEATURES: dict[str, float] = {
    "health_mean": 1.0,
    "health_min": 1.0,
    "health_last": 1.0,
    "health_trend": 0.0,
    "log_activation_variance": 0.0,
    "dead_neuron_ratio": 0.0,
    "avg_correlation": 0.0,
    "log_gradient_norm": 0.0,
    "log_latency_ms": 0.0,
    "log_error_count": 0.0,
    "active_seed_fraction": 0.0,
    "dormant_seed_fraction": 0.0,
    "has_data": 0.0,
}

DORMANT = "DORMANT"


#: The [low, high] every HealthSignal float is clipped to when folded (NaN becomes 0): one table for the
#: one-by-one fold here and the column fold of ``models.batch_aggregates``.
SIGNAL_CLIP: dict[str, tuple[float, float]] = {
    "health_score": (0.0, 1.0),
    "activation_variance": (0.0, 1e30),
    "dead_neuron_ratio": (0.0, 1.0),
    "avg_correlation": (-1.0, 1.0),
    "gradient_norm": (0.0, 1e30),
    "execution_latency_ms": (0.0, 1e12),
}


def _finite(value: Any, default: float = 0.0, lo: float = -math.inf, hi: float = math.inf) -> float:
    """``float(value)`` clipped to [lo, hi]; NaN/None/non-numbers give ``default``, +-inf the bound."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return default
    if math.isnan(v):
        return default
    if math.isinf(v):
        bound = hi if v > 0 else lo
        return bound if math.isfinite(bound) else default
    return min(max(v, lo), hi)


def _clipped(signal: dict, name: str) -> float:
    """A signal's float field, finite and clipped to its SIGNAL_CLIP range."""
    return _finite(signal.get(name), 0.0, *SIGNAL_CLIP[name])


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return default


# --------------------------------------------------------------------------- aggregates

_SHARED_STATES: dict[tuple[str, ...], tuple[str, ...]] = {}
_SHARED_STATES_MAX = 4096


def shared_states(states: Any) -> tuple[str, ...]:
    """A layer's seed states as one shared tuple per distinct value (bounded; beyond that, a new tuple).

    A worker's windowed table holds a layer aggregate per model, layer and live window (~84k at
    1,000 models). With a list inside, every aggregate dict is a container the garbage collector
    tracks, and each full collection walked them all while the event loop stood still (74 ms
    measured in a worker at 1,000 models). A shared tuple of strings is untracked once the collector
    has seen it, and a dict holding only numbers, strings and untracked tuples is never tracked:
    the table's aggregates drop out of every collection. Immutable, so sharing is safe."""
    key = tuple(states)
    shared = _SHARED_STATES.get(key)
    if shared is None:
        if len(_SHARED_STATES) >= _SHARED_STATES_MAX:
            return key
        shared = _SHARED_STATES[key] = key
    return shared



def update_layer_aggregate(agg: dict | None, signal: dict) -> dict:
    """Fold one HealthSignal dict into a per-layer window aggregate, O(1) time and space.

    Values are sanitised on the way in (NaN/inf/out-of-range become finite and clipped), so
    an aggregate is always JSON-safe; a NaN health_score counts as 0 (a layer reporting NaN
    is treated as unhealthy). ``first``/``last`` are chosen by ``timestamp_ms``
    (ties: the later arrival is "last"), so out-of-order delivery is handled. The trend is an
    online least-squares fit of health against time (seconds since ``t0_ms``, the first
    timestamp this aggregate saw), kept as running sums; see :func:`health_trend`.

    Returns a new dict; ``agg`` is not modified.

    Equals ``merge_layer_aggregates(agg, <aggregate of signal alone>)``, written out for the hot
    path: no intermediate one-signal dict, and the "last" fields are only sanitised when this
    signal is the latest.
    """
    if agg is None:
        return _single(signal)
    get = signal.get
    h = _clipped(signal, "health_score")
    ts = _int(get("timestamp_ms"))
    out = dict(agg)
    d = (ts - agg["t0_ms"]) / 1000.0  # this signal's t on the aggregate's time origin
    out["count"] = agg["count"] + 1
    out["health_sum"] = agg["health_sum"] + h
    if h < agg["health_min"]:
        out["health_min"] = h
    if h > agg["health_max"]:
        out["health_max"] = h
    out["sum_t"] = agg["sum_t"] + d
    out["sum_tt"] = agg["sum_tt"] + d * d
    out["sum_th"] = agg["sum_th"] + d * h
    out["latency_sum_ms"] = agg["latency_sum_ms"] + _clipped(signal, "execution_latency_ms")
    out["error_sum"] = agg["error_sum"] + max(_int(get("error_count")), 0)
    if ts < agg["first_timestamp_ms"]:
        out["first_timestamp_ms"] = ts
        out["health_first"] = h
    if ts >= agg["last_timestamp_ms"]:
        out["health_last"] = h
        out["last_timestamp_ms"] = ts
        out["activation_variance"] = _clipped(signal, "activation_variance")
        out["dead_neuron_ratio"] = _clipped(signal, "dead_neuron_ratio")
        out["avg_correlation"] = _clipped(signal, "avg_correlation")
        out["gradient_norm"] = _clipped(signal, "gradient_norm")
        out["active_seeds"] = max(_int(get("active_seeds")), 0)
        out["total_seeds"] = max(_int(get("total_seeds")), 0)
        out["seed_states"] = shared_states(str(x) for x in (get("seed_states") or ()))
        out["epoch"] = _int(get("epoch"))
        out["step"] = _int(get("step"))
    else:
        out["seed_states"] = shared_states(agg.get("seed_states", ()))
    return out


def _single(signal: dict) -> dict:
    """The aggregate of exactly one signal."""
    h = _clipped(signal, "health_score")
    ts = _int(signal.get("timestamp_ms"))
    states = shared_states(str(s) for s in (signal.get("seed_states") or ()))
    return {
        "count": 1,
        "health_sum": h,
        "health_min": h,
        "health_max": h,
        "health_first": h,
        "health_last": h,
        "first_timestamp_ms": ts,
        "last_timestamp_ms": ts,
        # Least-squares sums over t = (timestamp_ms - t0_ms) / 1000.
        "t0_ms": ts,
        "sum_t": 0.0,
        "sum_tt": 0.0,
        "sum_th": 0.0,
        "activation_variance": _clipped(signal, "activation_variance"),
        "dead_neuron_ratio": _clipped(signal, "dead_neuron_ratio"),
        "avg_correlation": _clipped(signal, "avg_correlation"),
        "gradient_norm": _clipped(signal, "gradient_norm"),
        "latency_sum_ms": _clipped(signal, "execution_latency_ms"),
        "error_sum": max(_int(signal.get("error_count")), 0),
        "active_seeds": max(_int(signal.get("active_seeds")), 0),
        "total_seeds": max(_int(signal.get("total_seeds")), 0),
        "seed_states": states,
        "epoch": _int(signal.get("epoch")),
        "step": _int(signal.get("step")),
    }


_LAST_KEYS = (
    "health_last",
    "last_timestamp_ms",
    "activation_variance",
    "dead_neuron_ratio",
    "avg_correlation",
    "gradient_norm",
    "active_seeds",
    "total_seeds",
    "seed_states",
    "epoch",
    "step",
)


def merge_layer_aggregates(a: dict | None, b: dict | None) -> dict:
    """Combine two window aggregates of the same layer (either may be None).

    Counts and sums add; min/max combine; first/last come from whichever side has the
    earlier/later timestamp (ties: ``a`` keeps "first", ``b`` wins "last"). The
    least-squares sums of ``b`` are re-centred onto ``a``'s time origin, so the fitted trend
    of the merge equals the trend over the union of the signals.
    """
    if a is None and b is None:
        raise ValueError("merge_layer_aggregates needs at least one aggregate")
    if a is None:
        return _copy(b)  # type: ignore[arg-type]
    if b is None:
        return _copy(a)
    out = _copy(a)
    na, nb = a["count"], b["count"]
    d = (b["t0_ms"] - a["t0_ms"]) / 1000.0  # shift b's t onto a's origin: t_a = t_b + d
    out["count"] = na + nb
    out["health_sum"] = a["health_sum"] + b["health_sum"]
    out["health_min"] = min(a["health_min"], b["health_min"])
    out["health_max"] = max(a["health_max"], b["health_max"])
    out["sum_t"] = a["sum_t"] + b["sum_t"] + nb * d
    out["sum_tt"] = a["sum_tt"] + b["sum_tt"] + 2.0 * d * b["sum_t"] + nb * d * d
    out["sum_th"] = a["sum_th"] + b["sum_th"] + d * b["health_sum"]
    out["latency_sum_ms"] = a["latency_sum_ms"] + b["latency_sum_ms"]
    out["error_sum"] = a["error_sum"] + b["error_sum"]
    if b["first_timestamp_ms"] < a["first_timestamp_ms"]:
        out["first_timestamp_ms"] = b["first_timestamp_ms"]
        out["health_first"] = b["health_first"]
    if b["last_timestamp_ms"] >= a["last_timestamp_ms"]:
        for key in _LAST_KEYS:
            out[key] = b[key]
        out["seed_states"] = shared_states(b["seed_states"])
    return out


def _copy(agg: dict) -> dict:
    out = dict(agg)
    out["seed_states"] = shared_states(agg.get("seed_states", ()))
    return out


def health_mean(agg: dict) -> float:
    """Window mean of health_score."""
    return agg["health_sum"] / agg["count"] if agg.get("count") else 1.0


def health_trend(agg: dict) -> float:
    """Fitted health change across the window, in health units, clipped to [-1, 1].

    The least-squares slope of health vs. time (per second) multiplied by the window's time
    span (last - first timestamp), i.e. how much the fitted line rises or falls between the
    first and last signal. Independent of the reporting rate. 0 with fewer than two
    signals or when all signals share one timestamp.
    """
    n = agg.get("count", 0)
    if n < 2:
        return 0.0
    st, stt, sth, sh = agg["sum_t"], agg["sum_tt"], agg["sum_th"], agg["health_sum"]
    denom = n * stt - st * st
    span_s = (agg["last_timestamp_ms"] - agg["first_timestamp_ms"]) / 1000.0
    if denom <= 1e-12 * max(1.0, n * stt) or span_s <= 0:
        return 0.0
    slope = (n * sth - st * sh) / denom
    return _finite(slope * span_s, 0.0, -1.0, 1.0)


def first_dormant_seed(seed_states: Sequence[str], taken: Collection[int] = ()) -> int | None:
    """Index of the first DORMANT seed not in ``taken``, or None."""
    for i, state in enumerate(seed_states):
        if state == DORMANT and i not in taken:
            return i
    return None


# --------------------------------------------------------------------------- graph


@dataclass
class ModelGraph:
    """One model's layer graph as the policy sees it.

    node_features: float32 [N, F] with F = len(FEATURE_NAMES), columns in FEATURE_NAMES order.
    edge_index: int64 [2, E], directed topology edges (source row 0, target row 1), no
        self-loops or duplicates; the policy's collate makes them undirected.
    dormant_seed: per layer, the first DORMANT seed index, or None (not adaptable).
    """

    model_id: str
    run_id: str
    layer_names: list[str]
    node_features: np.ndarray
    edge_index: np.ndarray
    dormant_seed: list[int | None]
    epoch: int

    @property
    def num_nodes(self) -> int:
        return len(self.layer_names)


# Column groups, in FEATURE_NAMES order: window statistics, then topology/adaptation facts.
_WINDOW_FEATURES = FEATURE_NAMES[:12]
_NEUTRAL_WINDOW = [NEUTRAL_FEATURES[name] for name in _WINDOW_FEATURES]
assert FEATURE_NAMES[12:] == (
    "log_parameter_count", "log_input_size", "log_output_size", "relative_depth",
    "epochs_since_adapted", "ever_adapted", "has_data",
)


def _num(value: Any) -> float:
    """float(value), or NaN when it is not a number (cleaned later, vectorised)."""
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return math.nan


def _window_row(agg: dict | None, taken: Collection[int] = ()) -> tuple[list[float], int | None, float]:
    """The 12 window-statistic features of one layer (may hold NaN from a corrupted
    aggregate; build_graph cleans), its first dormant seed not in ``taken``, and has_data."""
    if not agg or agg.get("count", 0) <= 0:
        return list(_NEUTRAL_WINDOW), None, 0.0
    log1p = math.log1p
    n = agg["count"]
    states = agg.get("seed_states") or []
    total = agg.get("total_seeds", 0)
    n_dormant = states.count(DORMANT)
    row = [
        agg["health_sum"] / n,
        agg["health_min"],
        agg["health_last"],
        health_trend(agg),
        log1p(max(agg["activation_variance"], 0.0)),
        agg["dead_neuron_ratio"],
        agg["avg_correlation"],
        log1p(max(agg["gradient_norm"], 0.0)),
        log1p(max(agg["latency_sum_ms"] / n, 0.0)),
        log1p(max(agg["error_sum"], 0)),
        min(agg.get("active_seeds", 0) / total, 1.0) if total > 0 else 0.0,
        n_dormant / len(states) if states else 0.0,
    ]
    return row, (first_dormant_seed(states, taken) if n_dormant else None), 1.0


def build_graph(
    topology: dict,
    aggregates: dict[str, dict],
    last_adapted_epoch: dict[str, int],
    epoch: int,
    taken_seeds: dict[str, Collection[int]] | None = None,
) -> ModelGraph:
    """Build the policy input for one model from its topology and window aggregates.

    Nodes follow the topology's layer order (a repeated layer name keeps its first
    occurrence). Layers without an aggregate get NEUTRAL_FEATURES, has_data=0 and no
    dormant seed (unknown seed states are never adapted); a layer's seeds in ``taken_seeds``
    (already commanded) are not offered as its dormant seed. Edges are mapped by layer name;
    edges naming unknown layers, self-loops and duplicates are dropped. The output holds
    no NaN/inf: every feature is finite and clipped to +-FEATURE_CLIP.
    """
    names: list[str] = []
    layers: list[dict] = []
    seen: set[str] = set()
    for layer in topology.get("layers") or []:
        name = str(layer.get("name"))
        if name not in seen:
            seen.add(name)
            names.append(name)
            layers.append(layer)
    n = len(names)

    window: list[list[float]] = []
    dormant: list[int | None] = []
    has_data: list[float] = []
    sizes: list[tuple[float, float, float]] = []
    since: list[float] = []
    for name, layer in zip(names, layers):
        row, d, has = _window_row(aggregates.get(name), (taken_seeds or {}).get(name, ()))
        window.append(row)
        dormant.append(d)
        has_data.append(has)
        sizes.append(
            (_num(layer.get("parameter_count")), _num(layer.get("input_size")), _num(layer.get("output_size")))
        )
        last = last_adapted_epoch.get(name)
        since.append(math.nan if last is None else epoch - _num(last))

    x = np.empty((n, len(FEATURE_NAMES)), dtype=np.float64)
    x[:, :12] = np.asarray(window, dtype=np.float64).reshape(n, 12)
    raw_sizes = np.nan_to_num(np.asarray(sizes, dtype=np.float64).reshape(n, 3), nan=0.0, posinf=1e300, neginf=0.0)
    x[:, 12:15] = np.log1p(np.maximum(raw_sizes, 0.0))
    x[:, 15] = np.arange(n) / (n - 1) if n > 1 else 0.0
    since_arr = np.asarray(since, dtype=np.float64)
    ever = ~np.isnan(since_arr)
    cap = EPOCHS_SINCE_ADAPTED_CAP
    x[:, 16] = np.where(ever, np.clip(np.nan_to_num(since_arr, nan=cap), 0, cap) / cap, 1.0)
    x[:, 17] = ever
    x[:, 18] = has_data
    x = np.clip(np.nan_to_num(x, nan=0.0, posinf=FEATURE_CLIP, neginf=-FEATURE_CLIP), -FEATURE_CLIP, FEATURE_CLIP)

    index = {name: i for i, name in enumerate(names)}
    pairs: dict[tuple[int, int], None] = {}
    for edge in topology.get("edges") or []:
        s, t = index.get(edge.get("source")), index.get(edge.get("target"))
        if s is not None and t is not None and s != t:
            pairs.setdefault((s, t), None)
    edge_index = np.asarray(list(pairs), dtype=np.int64).reshape(-1, 2).T.copy()

    return ModelGraph(
        model_id=str(topology.get("model_id", "")),
        run_id=str(topology.get("run_id", "")),
        layer_names=names,
        node_features=x.astype(np.float32),
        edge_index=edge_index,
        dormant_seed=dormant,
        epoch=int(epoch),
    )
