"""Scenario 2 — schema evolution: messages written with an older schema version still decode.

A copy of ``schemas/avro`` is evolved: HealthSignal, EpochOutcome and ModelTopology gain an optional
field ``note`` (``["null", "string"]``, default null), released as the next version after the shipped
ones. A worker runs with the evolved copy as its *current* schemas (``tamiyo.chaos.evolved_worker``),
while half of the models keep writing the shipped version ("v1" in the report: the code in this
repository, i.e. an old producer) and the other half write the evolved one ("v2": an upgraded
producer). Checks: nothing is dead-lettered, everything is archived, both halves get decisions, and
an archived old message read with the evolved reader has ``note = None``.

The unit version of the same property is ``tests/schemas/test_codec.py::
test_old_writer_version_resolves_against_current_reader``.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path
from typing import Any

import fastavro
import numpy as np

from schemas import encode
from schemas.codec import SCHEMA_DIR, SchemaRegistry, release_order
from tamiyo.chaos.harness import ChaosEnv, Observer, audit, produce_with_positions, progress, wait_until
from tamiyo.chaos.report import scenario_result

EVOLVED = ("HealthSignal", "EpochOutcome", "ModelTopology")
NEW_FIELD = {"name": "note", "type": ["null", "string"], "default": None,
             "doc": "added by the chaos schema-evolution scenario"}


def evolve_schemas(directory: Path) -> SchemaRegistry:
    """Copy the shipped schemas into ``directory`` and add ``note`` to the EVOLVED ones, each released
    as the version after its newest shipped one."""
    releases = directory / "releases"
    releases.mkdir(parents=True, exist_ok=True)
    for path in SCHEMA_DIR.glob("*.avsc"):
        shutil.copy(path, directory / path.name)
    for path in (SCHEMA_DIR / "releases").glob("*.avsc"):
        shutil.copy(path, releases / path.name)
    for name in EVOLVED:
        schema = json.loads((SCHEMA_DIR / f"{name}.avsc").read_text())
        schema["fields"].append(NEW_FIELD)
        text = json.dumps(schema, indent=2)
        (directory / f"{name}.avsc").write_text(text)
        newest = max(release_order(path)[1] for path in releases.glob(f"{name}.v*.avsc"))
        (releases / f"{name}.v{newest + 1}.avsc").write_text(text)
    return SchemaRegistry(directory)


def encode_with(registry: SchemaRegistry, name: str, value: dict[str, Any]) -> bytes:
    schema = registry.current[name]
    buf = io.BytesIO()
    buf.write(schema.header)
    fastavro.schemaless_writer(buf, schema.parsed, value)
    return buf.getvalue()


def run(env: ChaosEnv, quick: bool = False, seed: int = 0) -> dict[str, Any]:
    from hosts.simulation import SimulatedModel

    started = time.monotonic()
    models, epochs = (8, 3) if quick else (20, 6)
    settings = env.settings("schema_evolution", partitions=2)
    t = settings.topics
    schema_dir = settings.data_dir / "evolved-schemas"
    evolved = evolve_schemas(schema_dir)
    observer = Observer(settings)
    observer.start()
    worker = env.start_worker(settings, module="tamiyo.chaos.evolved_worker",
                              TAMIYO_CHAOS_SCHEMA_DIR=str(schema_dir), TAMIYO_EPSILON="0.1")
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(models)]
    sims = [SimulatedModel(f"{'old' if i % 2 == 0 else 'new'}-{i:03d}", rng, epochs_per_run=1000)
            for i, rng in enumerate(rngs)]

    def enc(sim: Any, name: str, record: dict) -> bytes:
        if sim.model_id.startswith("old"):
            return encode(name, record)  # v1: what the code in this repository writes
        return encode_with(evolved, name, dict(record, note=f"v2 writer {sim.model_id}"))

    items = [(t.topology, s.model_id.encode(), enc(s, "ModelTopology", s.topology()), s.model_id[:3]) for s in sims]
    for _ in range(epochs):
        for s in sims:
            items += [(t.health, s.model_id.encode(), enc(s, "HealthSignal", x), s.model_id[:3])
                      for x in s.health_signals()]
            items.append((t.outcomes, s.model_id.encode(), enc(s, "EpochOutcome", s.end_epoch()), s.model_id[:3]))
    ready_s = worker.wait_ready()
    progress(f"schema_evolution: worker (evolved schemas) ready in {ready_s:.1f}s; producing {len(items)} messages")
    delivered = produce_with_positions(settings, items)
    result, _ = audit(observer, settings, {}, timeout=60)
    models_of = lambda prefix: {s.model_id for s in sims if s.model_id.startswith(prefix)}  # noqa: E731
    try:  # decisions may wait briefly for their epoch's signals
        wait_until(lambda: {d.model_id for d in observer.decisions_since(0.0)} >= models_of("old") | models_of("new"),
                   30, 0.3, "a decision for every model")
    except TimeoutError:
        pass
    with observer.lock:
        decided_old = {d.model_id for d in observer.decisions if d.model_id.startswith("old")}
        decided_new = {d.model_id for d in observer.decisions if d.model_id.startswith("new")}
        dead = dict(observer.dead)
    observer.stop()
    alive = worker.alive()
    worker.stop()

    # Read one archived v1 message back with the evolved reader: the added field takes its default.
    from streams.kafka.reader import read_topic

    resolved_note = "unchecked"
    for message in read_topic(settings, t.experience, idle_timeout=5.0):
        value = message.value()
        writer = evolved.by_fingerprint.get(bytes(value[2:10]))
        if writer is not None and writer.name == "EpochOutcome" and writer.fingerprint != evolved.current[
                "EpochOutcome"].fingerprint:
            reader = evolved.current["EpochOutcome"]
            record = fastavro.schemaless_reader(io.BytesIO(value[10:]), writer.parsed, reader.parsed)
            resolved_note = record["note"]
            break
    old_count = sum(1 for _, label in delivered if label == "old")
    checks = {
        "worker_alive": alive,
        "nothing_dead_lettered": not dead,
        "everything_archived": result.lost == 0,
        "old_writers_decided": len(decided_old) == (models + 1) // 2,
        "new_writers_decided": len(decided_new) == models // 2,
        "old_record_reads_default": resolved_note is None,
    }
    return scenario_result(
        checks, lost=result.lost, crashes=0, duplicate_applies=0, dead_lettered=len(dead),
        evolved_schemas=list(EVOLVED),
        added_field=NEW_FIELD["name"],
        messages_old_schema_v1=old_count,
        messages_new_schema_v2=len(delivered) - old_count,
        models_decided_old_writer=len(decided_old),
        models_decided_new_writer=len(decided_new),
        decisions=result.decisions,
        unit_test="tests/schemas/test_codec.py::test_old_writer_version_resolves_against_current_reader",
        seconds=round(time.monotonic() - started, 1),
    )
