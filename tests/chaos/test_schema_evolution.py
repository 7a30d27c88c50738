"""Scenario 2: a reader on evolved schemas still decodes messages of the older version.

Unit version: tests/schemas/test_codec.py::test_old_writer_version_resolves_against_current_reader.
"""

from __future__ import annotations

import pytest

from schemas import encode
from schemas.codec import HEADER_SIZE
from tamiyo.chaos.schema_evolution import EVOLVED, encode_with, evolve_schemas
from tests.chaos.conftest import explain, run_quick
from tests.samples import SAMPLES


def test_evolved_registry_reads_both_versions(tmp_path) -> None:
    evolved = evolve_schemas(tmp_path / "avro")
    for name in EVOLVED:
        old = encode(name, SAMPLES[name])  # v1, as this repository writes it
        new = encode_with(evolved, name, dict(SAMPLES[name], note="hello"))
        assert old[:HEADER_SIZE] != new[:HEADER_SIZE]  # different writer fingerprints
        writer = evolved.by_fingerprint[old[2:HEADER_SIZE]]
        assert writer.name == name and writer.fingerprint != evolved.current[name].fingerprint


@pytest.mark.kafka
@pytest.mark.slow
def test_worker_on_evolved_schemas_reads_old_and_new_writers(chaos_env) -> None:
    result = run_quick(chaos_env, "schema_evolution")
    assert result["passed"], explain(result)
    assert result["messages_old_schema_v1"] > 0 and result["messages_new_schema_v2"] > 0
    assert result["dead_lettered"] == 0 and result["lost"] == 0
