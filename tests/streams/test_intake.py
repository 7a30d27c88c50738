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
