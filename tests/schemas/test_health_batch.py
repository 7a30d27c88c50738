"""Building a HealthBatch from reports, and its signals back (schemas.health_batch)."""

from __future__ import annotations

import pytest

from schemas import decode, encode
from schemas.health_batch import BatchShapeError, batch_signals, batch_size, health_batch
from tests.samples import SAMPLES


def report(step: int, layers: tuple[str, ...] = ("layers.0", "layers.1"), **changes: object) -> list[dict]:
    return [dict(SAMPLES["HealthSignal"], layer_name=name, step=step, timestamp_ms=1_700_000_000_000 + step,
                 **changes) for name in layers]


def test_reports_round_trip_through_the_wire() -> None:
    reports = [report(10), report(20, health_score=0.3, total_seeds=3, seed_states=["DORMANT"] * 3)]
    batch = health_batch("m-1", "run-1", reports)
    assert batch["layer_names"] == ["layers.0", "layers.1"] and batch["step"] == [10, 20]
    assert batch_size(batch) == 4
    wire = decode(encode("HealthBatch", batch))
    assert wire.name == "HealthBatch"
    assert batch_signals(wire.value) == [s for r in reports for s in r]


@pytest.mark.parametrize("reports,message", [
    ([], "at least one report"),
    ([report(10), report(20, layers=("layers.0",))], "report 1 has layers"),
    ([report(10) + [dict(report(10)[0], layer_name="layers.2", step=11)]], "differ in step"),
    ([report(10, model_id="m-2")], "signal of 'm-2'"),
])
def test_reports_that_cannot_share_a_batch_are_refused(reports: list, message: str) -> None:
    with pytest.raises(BatchShapeError, match=message):
        health_batch("m-1", "run-1", reports)
