"""Intake: every kind of bad input is rejected with a kind and reason; valid input passes."""

from __future__ import annotations

import pytest

from schemas import encode
from streams.intake import Accepted, RawMessage, Rejected, accept
from streams.validation import validate, ValidationError
from tests.samples import SAMPLES

HEALTH = frozenset({"HealthSignal"})


def raw(value: bytes | None, key: bytes | None = b"m-1", topic: str = "t.health") -> RawMessage:
    return RawMessage(topic=topic, partition=1, offset=42, key=key, value=value, timestamp_ms=0)


def signal(**changes: object) -> bytes:
    return encode("HealthSignal", dict(SAMPLES["HealthSignal"], **changes))


def test_valid_signal_is_accepted() -> None:
    result = accept(raw(signal()), HEALTH, 10_000)
    assert isinstance(result, Accepted)
    assert result.name == "HealthSignal" and result.record["layer_name"] == "layers.0"


@pytest.mark.parametrize("message,kind", [
    (raw(b"\x07" * 30), "bad_header"),
    (raw(signal()[:20]), "bad_body"),
    (raw(b"\xc3\x01" + b"\x01" * 8 + signal()[10:]), "unknown_schema"),
    (raw(signal(health_score=float("nan"))), "validation"),
    (raw(signal(gradient_norm=float("inf"))), "validation"),
    (raw(signal(health_score=1.5)), "validation"),
    (raw(signal(dead_neuron_ratio=-0.1)), "validation"),
    (raw(signal(active_seeds=3)), "validation"),
    (raw(signal(seed_states=["DORMANT"])), "validation"),
    (raw(signal(layer_name="")), "validation"),
    (raw(signal(), key=b""), "empty_key"),
    (raw(signal(), key=None), "empty_key"),
    (raw(signal(), key=b"other-model"), "key_mismatch"),
    (raw(encode("EpochOutcome", SAMPLES["EpochOutcome"])), "wrong_type"),
    (raw(signal() + b"\x00" * 2000), "oversized"),
])
def test_bad_input_is_rejected_with_its_kind(message: RawMessage, kind: str) -> None:
    result = accept(message, HEALTH, 1000)
    assert isinstance(result, Rejected), result
    assert result.kind == kind
    assert result.reason
    assert result.raw.offset == 42 and result.raw.partition == 1


def test_topology_edges_must_name_known_layers() -> None:
    topology = dict(SAMPLES["ModelTopology"], edges=[{"source": "layers.0", "target": "nowhere"}])
    with pytest.raises(ValidationError, match="unknown layer"):
        validate("ModelTopology", topology)
    duplicate = dict(SAMPLES["ModelTopology"], layers=SAMPLES["ModelTopology"]["layers"][:1] * 2)
    with pytest.raises(ValidationError, match="unique"):
        validate("ModelTopology", duplicate)


def test_outcome_and_command_ranges() -> None:
    with pytest.raises(ValidationError):
        validate("EpochOutcome", dict(SAMPLES["EpochOutcome"], val_accuracy=2.0))
    with pytest.raises(ValidationError):
        validate("EpochOutcome", dict(SAMPLES["EpochOutcome"], val_loss=float("nan")))
    with pytest.raises(ValidationError, match="last_report_step=-1 is negative"):
        validate("EpochOutcome", dict(SAMPLES["EpochOutcome"], last_report_step=-1))
    validate("EpochOutcome", dict(SAMPLES["EpochOutcome"], last_report_step=None))  # v1 hosts: no step
    validate("EpochOutcome", dict(SAMPLES["EpochOutcome"], last_report_step=0))
    with pytest.raises(ValidationError):
        validate("AdaptationCommand", dict(SAMPLES["AdaptationCommand"], probability=1.2))
    validate("CommandOutcome", SAMPLES["CommandOutcome"])  # valid: no exception
    validate("CommandOutcome", dict(SAMPLES["CommandOutcome"], action=None, layer_name=None, seed_index=None))  # v1
    with pytest.raises(ValidationError, match="names no layer_name"):
        validate("CommandOutcome", dict(SAMPLES["CommandOutcome"], layer_name=None))
    with pytest.raises(ValidationError, match="seed_index=-1 is negative"):
        validate("CommandOutcome", dict(SAMPLES["CommandOutcome"], seed_index=-1))
    for name, field in (("EpochOutcome", "epoch"), ("CommandOutcome", "seed_index"), ("AdaptationCommand", "epoch"),
                        ("HealthSignal", "error_count")):
        with pytest.raises(ValidationError, match=f"{field}=2147483648 is outside the Avro int range"):
            validate(name, dict(SAMPLES[name], **{field: 2**31}))
        validate(name, dict(SAMPLES[name], **{field: 2**31 - 1}))


def report(signal_changes: dict | None = None, **changes: object) -> bytes:
    record = dict(SAMPLES["HealthReport"], **changes)
    if signal_changes is not None:
        record["signals"] = [record["signals"][0], dict(record["signals"][1], **signal_changes)]
    return encode("HealthReport", record)


def test_valid_report_is_accepted_with_its_signals() -> None:
    result = accept(raw(report()), HEALTH | {"HealthReport"}, 10_000)
    assert isinstance(result, Accepted) and result.name == "HealthReport"
    assert [s["layer_name"] for s in result.record["signals"]] == ["layers.0", "layers.1"]


@pytest.mark.parametrize("value,reason", [
    (report(signal_changes={"health_score": float("nan")}), "signal 1 ('layers.1'): health_score is nan"),
    (report(signal_changes={"model_id": "m-2"}), "signal 1 is for 'm-2'"),
    (report(signal_changes={"run_id": "run-0"}), "run 'run-0'"),
    (report(signals=[]), "signals is empty"),
])
def test_a_report_with_one_bad_signal_is_rejected_whole(value: bytes, reason: str) -> None:
    result = accept(raw(value), HEALTH | {"HealthReport"}, 10_000)
    assert isinstance(result, Rejected) and result.kind == "validation"
    assert reason in result.reason, result.reason


def test_report_schema_carries_the_current_health_signal_schema() -> None:
    """HealthReport.avsc repeats HealthSignal.avsc inline (no schema references): they must not drift."""
    import json

    from schemas.codec import SCHEMA_DIR

    signal_schema = json.loads((SCHEMA_DIR / "HealthSignal.avsc").read_text())
    report_schema = json.loads((SCHEMA_DIR / "HealthReport.avsc").read_text())
    items = next(f for f in report_schema["fields"] if f["name"] == "signals")["type"]["items"]
    assert items == signal_schema


def batch(**changes: object) -> bytes:
    return encode("HealthBatch", dict(SAMPLES["HealthBatch"], **changes))


def test_valid_batch_is_accepted_with_numpy_float_columns() -> None:
    import numpy as np

    result = accept(raw(batch()), HEALTH | {"HealthBatch"}, 10_000)
    assert isinstance(result, Accepted) and result.name == "HealthBatch"
    assert isinstance(result.record["health_score"], np.ndarray)
    assert result.record["health_score"].tolist() == SAMPLES["HealthBatch"]["health_score"]
    assert result.record["layer_names"] == ["layers.0", "layers.1"]


@pytest.mark.parametrize("changes,reason", [
    ({"health_score": [0.8, 0.7, float("nan"), 0.6]}, "report 1 layer 'layers.0': health_score=nan is not a finite"),
    ({"avg_correlation": [0.2, -0.1, 0.2, 1.5]}, "report 1 layer 'layers.1': avg_correlation=1.5 is outside"),
    ({"gradient_norm": [0.03, float("inf"), 0.03, 0.01]}, "gradient_norm=inf is not a finite number"),
    ({"error_count": [0, -1, 1, 0]}, "report 0 layer 'layers.1': error_count=-1 is negative"),
    ({"step": [120, -140]}, "report 1: step=-140 is negative"),
    ({"active_seeds": [1, 3, 1, 1]}, "report 0 layer 'layers.1': active_seeds=3 > total_seeds=2"),
    ({"seed_states": ["DORMANT"]}, "1 seed_states for 8 seeds"),
    ({"health_score": [0.8, 0.7, 0.75]}, "health_score has 3 items, expected 4 (2 reports x 2 layers)"),
    ({"timestamp_ms": [1]}, "timestamp_ms has 1 items, expected 2 (2 reports)"),
    ({"layer_names": ["layers.0", "layers.0"]}, "layer_names must be unique"),
    ({"epoch": []}, "epoch is empty"),
    # Avro int is 32-bit, but fastavro writes larger Python ints there; their int64 sum could wrap
    ({"total_seeds": [2**62, 2**62, 2**62, 2**62 + 2], "active_seeds": [0] * 4, "seed_states": ["DORMANT"] * 2},
     "report 0 layer 'layers.0': total_seeds=4611686018427387904 is outside the Avro int range"),
    ({"epoch": [3, 2**31]}, "report 1: epoch=2147483648 is outside the Avro int range"),
])
def test_a_batch_with_one_bad_item_is_rejected_whole(changes: dict, reason: str) -> None:
    result = accept(raw(batch(**changes)), HEALTH | {"HealthBatch"}, 10_000)
    assert isinstance(result, Rejected) and result.kind == "validation"
    assert reason in result.reason, result.reason


def test_batch_schema_has_a_column_for_every_health_signal_field() -> None:
    """HealthBatch.avsc is HealthSignal.avsc by column: same fields (model, run and layer names once), the
    item types of HealthSignal's, the same SeedState enum. They must not drift."""
    import json

    from schemas.codec import SCHEMA_DIR

    signal_fields = {f["name"]: f["type"] for f in json.loads((SCHEMA_DIR / "HealthSignal.avsc").read_text())["fields"]}
    batch_fields = {f["name"]: f["type"] for f in json.loads((SCHEMA_DIR / "HealthBatch.avsc").read_text())["fields"]}
    assert batch_fields.pop("model_id") == signal_fields.pop("model_id") == "string"
    assert batch_fields.pop("run_id") == signal_fields.pop("run_id") == "string"
    assert batch_fields.pop("layer_names") == {"type": "array", "items": signal_fields.pop("layer_name")}
    assert batch_fields.pop("seed_states") == signal_fields.pop("seed_states")
    assert batch_fields == {name: {"type": "array", "items": item} for name, item in signal_fields.items()}
