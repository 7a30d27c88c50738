"""Semantic checks on decoded records: what Avro types cannot say (ranges, finiteness, consistency)."""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from schemas import DecodeError
from schemas.health_batch import DOUBLE_FIELDS, INT_FIELDS, REPORT_FIELDS


class ValidationError(DecodeError):
    """A message that decodes but is not a valid Tamiyo record."""


def _finite(record: dict[str, Any], *names: str) -> None:
    for name in names:
        value = record[name]
        if not math.isfinite(value):
            raise ValidationError("validation", f"{name} is {value}, not a finite number")


def _within(record: dict[str, Any], name: str, low: float, high: float) -> None:
    value = record[name]
    if not low <= value <= high:
        raise ValidationError("validation", f"{name}={value} is outside [{low}, {high}]")


def _non_negative(record: dict[str, Any], *names: str) -> None:
    for name in names:
        if record[name] < 0:
            raise ValidationError("validation", f"{name}={record[name]} is negative")


#: Avro ``int`` is 32-bit, but fastavro writes and reads any Python int there without a check: a
#: larger value would pass through to the DecisionRecords, which strict readers then refuse (and
#: sums of such values wrap in int64).
INT32_MAX = 2**31 - 1


def _int32(record: dict[str, Any], *names: str) -> None:
    for name in names:
        value = record.get(name)
        if value is not None and not -INT32_MAX - 1 <= value <= INT32_MAX:
            raise ValidationError("validation", f"{name}={value} is outside the Avro int range")


def _non_empty(record: dict[str, Any], *names: str) -> None:
    for name in names:
        if not record[name]:
            raise ValidationError("validation", f"{name} is empty")


#: A HealthSignal's float fields and their allowed [low, high]; each must also be finite. The one
#: table of these rules, for a signal alone and for every signal of a HealthBatch.
SIGNAL_FLOAT_RANGES = {"health_score": (0.0, 1.0), "activation_variance": (0.0, math.inf),
                       "dead_neuron_ratio": (0.0, 1.0), "avg_correlation": (-1.0, 1.0),
                       "gradient_norm": (0.0, math.inf), "execution_latency_ms": (0.0, math.inf)}
_BOUNDED = tuple(name for name, (_, high) in SIGNAL_FLOAT_RANGES.items() if high != math.inf)
_NON_NEGATIVE = tuple(name for name, (_, high) in SIGNAL_FLOAT_RANGES.items() if high == math.inf)


def _health_signal(r: dict[str, Any]) -> None:
    _non_empty(r, "model_id", "run_id", "layer_name")
    _finite(r, *SIGNAL_FLOAT_RANGES)
    for name in _BOUNDED:
        _within(r, name, *SIGNAL_FLOAT_RANGES[name])
    _non_negative(r, *REPORT_FIELDS, *_NON_NEGATIVE, *INT_FIELDS)
    _int32(r, "epoch", *INT_FIELDS)
    if r["active_seeds"] > r["total_seeds"]:
        raise ValidationError("validation", f"active_seeds={r['active_seeds']} > total_seeds={r['total_seeds']}")
    if len(r["seed_states"]) != r["total_seeds"]:
        raise ValidationError("validation", f"{len(r['seed_states'])} seed_states for total_seeds={r['total_seeds']}")


def _health_report(r: dict[str, Any]) -> None:
    _non_empty(r, "model_id", "run_id", "signals")
    for i, signal in enumerate(r["signals"]):
        if signal["model_id"] != r["model_id"] or signal["run_id"] != r["run_id"]:
            raise ValidationError("validation", f"signal {i} is for {signal['model_id']!r} run {signal['run_id']!r}, "
                                                f"the report for {r['model_id']!r} run {r['run_id']!r}")
        try:
            _health_signal(signal)
        except ValidationError as exc:
            raise ValidationError("validation", f"signal {i} ({signal['layer_name']!r}): {exc.reason}") from None


#: SIGNAL_FLOAT_RANGES as columns for a whole batch (infinity fails: the highest finite float instead).
_BATCH_LOW = np.array([low for low, _ in SIGNAL_FLOAT_RANGES.values()])[:, None]
_BATCH_HIGH = np.array([min(high, np.finfo(np.float64).max) for _, high in SIGNAL_FLOAT_RANGES.values()])[:, None]
_ACTIVE, _TOTAL = INT_FIELDS.index("active_seeds"), INT_FIELDS.index("total_seeds")
_EPOCH = REPORT_FIELDS.index("epoch")


def _health_batch(r: dict[str, Any]) -> None:
    """The HealthSignal rules on every signal of a batch at once, plus the batch's shape."""
    _non_empty(r, "model_id", "run_id", "layer_names", "epoch")
    names = r["layer_names"]
    if len(set(names)) != len(names) or not all(names):
        raise ValidationError("validation", "layer_names must be unique and non-empty")
    reports, width = len(r["epoch"]), len(names)
    for name in REPORT_FIELDS + DOUBLE_FIELDS + INT_FIELDS:
        expected = reports if name in REPORT_FIELDS else reports * width
        if len(r[name]) != expected:
            shape = f"{reports} reports" if name in REPORT_FIELDS else f"{reports} reports x {width} layers"
            raise ValidationError("validation", f"{name} has {len(r[name])} items, expected {expected} ({shape})")
    floats = np.array([r[name] for name in SIGNAL_FLOAT_RANGES], dtype=np.float64)
    per_report = np.array([r[name] for name in REPORT_FIELDS], dtype=np.int64)
    ints = np.array([r[name] for name in INT_FIELDS], dtype=np.int64)
    if (((floats >= _BATCH_LOW) & (floats <= _BATCH_HIGH)).all() and (per_report >= 0).all() and (ints >= 0).all()
            and (ints <= INT32_MAX).all() and (per_report[_EPOCH] <= INT32_MAX).all()):
        over = ints[_ACTIVE] > ints[_TOTAL]
        if over.any():
            i = int(np.flatnonzero(over)[0])
            raise ValidationError("validation", f"report {i // width} layer {names[i % width]!r}: "
                                                f"active_seeds={ints[_ACTIVE, i]} > total_seeds={ints[_TOTAL, i]}")
        seeds = int(ints[_TOTAL].sum())
        if len(r["seed_states"]) != seeds:
            raise ValidationError("validation", f"{len(r['seed_states'])} seed_states for {seeds} seeds "
                                                "(the sum of total_seeds)")
        return
    # Something is out of bounds: name the first offending value.
    for name, column in zip(REPORT_FIELDS, per_report):
        if (column < 0).any():
            i = int(np.flatnonzero(column < 0)[0])
            raise ValidationError("validation", f"report {i}: {name}={column[i]} is negative")
    if (per_report[_EPOCH] > INT32_MAX).any():
        i = int(np.flatnonzero(per_report[_EPOCH] > INT32_MAX)[0])
        raise ValidationError("validation", f"report {i}: epoch={per_report[_EPOCH, i]} is outside the Avro int range")
    named = list(zip(SIGNAL_FLOAT_RANGES, floats)) + list(zip(INT_FIELDS, ints))
    for name, column in named:
        low, high = SIGNAL_FLOAT_RANGES.get(name, (0.0, math.inf))
        bad = ~np.isfinite(column) | (column < low) | (column > high)
        if name in INT_FIELDS:
            bad |= column > INT32_MAX
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            if not np.isfinite(column[i]):
                rule = "is not a finite number"
            elif column[i] > INT32_MAX and name in INT_FIELDS:
                rule = "is outside the Avro int range"
            else:
                rule = "is negative" if high == math.inf else f"is outside [{low}, {high}]"
            raise ValidationError("validation", f"report {i // width} layer {names[i % width]!r}: "
                                                f"{name}={column[i]} {rule}")


def _topology(r: dict[str, Any]) -> None:
    _non_empty(r, "model_id", "run_id", "layers")
    names = [layer["name"] for layer in r["layers"]]
    if len(set(names)) != len(names) or not all(names):
        raise ValidationError("validation", "layer names must be unique and non-empty")
    for layer in r["layers"]:
        _non_negative(layer, "input_size", "output_size", "parameter_count", "num_seeds")
        _int32(layer, "input_size", "output_size", "num_seeds")
    known = set(names)
    for edge in r["edges"]:
        if edge["source"] not in known or edge["target"] not in known:
            raise ValidationError("validation", f"edge {edge['source']}->{edge['target']} names an unknown layer")


def _epoch_outcome(r: dict[str, Any]) -> None:
    _non_empty(r, "model_id", "run_id")
    _finite(r, "train_loss", "val_loss", "train_accuracy", "val_accuracy")
    _non_negative(r, "epoch", "train_loss", "val_loss", "parameter_count")
    _int32(r, "epoch")
    _within(r, "train_accuracy", 0.0, 1.0)
    _within(r, "val_accuracy", 0.0, 1.0)
    if r.get("last_report_step") is not None:
        _non_negative(r, "last_report_step")


def _command_outcome(r: dict[str, Any]) -> None:
    _non_empty(r, "decision_id", "model_id")
    _int32(r, "epoch", "seed_index")
    # v2 names the handled command; the controller's gate trusts it, so it must name a layer and seed.
    if r.get("action") == "GERMINATE" and not r.get("layer_name"):
        raise ValidationError("validation", "a GERMINATE outcome names no layer_name")
    if r.get("seed_index") is not None and r["seed_index"] < 0:
        raise ValidationError("validation", f"seed_index={r['seed_index']} is negative")


def _command(r: dict[str, Any]) -> None:
    _non_empty(r, "decision_id", "model_id", "policy_version")
    _int32(r, "epoch", "seed_index")
    _finite(r, "probability")
    _within(r, "probability", 0.0, 1.0)


VALIDATORS: dict[str, Callable[[dict[str, Any]], None]] = {
    "HealthSignal": _health_signal,
    "HealthReport": _health_report,
    "HealthBatch": _health_batch,
    "ModelTopology": _topology,
    "EpochOutcome": _epoch_outcome,
    "CommandOutcome": _command_outcome,
    "AdaptationCommand": _command,
}


def validate(name: str, record: dict[str, Any]) -> None:
    """Raise ValidationError when ``record`` (of Avro record ``name``) breaks a semantic rule."""
    check = VALIDATORS.get(name)
    if check is not None:
        check(record)
