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
    with pytest.raises(ValidationError):
        validate("AdaptationCommand", dict(SAMPLES["AdaptationCommand"], probability=1.2))
    validate("CommandOutcome", SAMPLES["CommandOutcome"])  # valid: no exception


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
