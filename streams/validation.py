"""Semantic checks on decoded records: what Avro types cannot say (ranges, finiteness, consistency)."""

from __future__ import annotations

import math
from typing import Any, Callable

from schemas import DecodeError


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


def _non_empty(record: dict[str, Any], *names: str) -> None:
    for name in names:
        if not record[name]:
            raise ValidationError("validation", f"{name} is empty")


def _health_signal(r: dict[str, Any]) -> None:
    _non_empty(r, "model_id", "run_id", "layer_name")
    _finite(r, "health_score", "activation_variance", "dead_neuron_ratio", "avg_correlation",
            "gradient_norm", "execution_latency_ms")
    _within(r, "health_score", 0.0, 1.0)
    _within(r, "dead_neuron_ratio", 0.0, 1.0)
    _within(r, "avg_correlation", -1.0, 1.0)
    _non_negative(r, "epoch", "step", "timestamp_ms", "activation_variance", "gradient_norm",
                  "execution_latency_ms", "error_count", "active_seeds", "total_seeds")
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


def _topology(r: dict[str, Any]) -> None:
    _non_empty(r, "model_id", "run_id", "layers")
    names = [layer["name"] for layer in r["layers"]]
    if len(set(names)) != len(names) or not all(names):
        raise ValidationError("validation", "layer names must be unique and non-empty")
    for layer in r["layers"]:
        _non_negative(layer, "input_size", "output_size", "parameter_count", "num_seeds")
    known = set(names)
    for edge in r["edges"]:
        if edge["source"] not in known or edge["target"] not in known:
            raise ValidationError("validation", f"edge {edge['source']}->{edge['target']} names an unknown layer")


def _epoch_outcome(r: dict[str, Any]) -> None:
    _non_empty(r, "model_id", "run_id")
    _finite(r, "train_loss", "val_loss", "train_accuracy", "val_accuracy")
    _non_negative(r, "epoch", "train_loss", "val_loss", "parameter_count")
    _within(r, "train_accuracy", 0.0, 1.0)
    _within(r, "val_accuracy", 0.0, 1.0)


def _command_outcome(r: dict[str, Any]) -> None:
    _non_empty(r, "decision_id", "model_id")


def _command(r: dict[str, Any]) -> None:
    _non_empty(r, "decision_id", "model_id", "policy_version")
    _finite(r, "probability")
    _within(r, "probability", 0.0, 1.0)


VALIDATORS: dict[str, Callable[[dict[str, Any]], None]] = {
    "HealthSignal": _health_signal,
    "HealthReport": _health_report,
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
