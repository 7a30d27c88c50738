"""Scenario 1 — bad input: many kinds of malformed messages interleaved with a valid stream.

Checks: the worker never stops; every bad message is on the dead-letter topic with its reason and
origin (matched by topic, partition and offset, with the expected error kind); every valid message is
archived on the experience topic, and every valid EpochOutcome gets its decision.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas import encode
from tamiyo.chaos.harness import ChaosEnv, Observer, audit, produce_with_positions, progress, wait_until
from tamiyo.chaos.report import scenario_result
from tamiyo.config import Settings

PARK_SECONDS = 2.0
MAX_MESSAGE_BYTES = 20_000

# kind of bad message -> the DeadLetter error kinds that are a correct verdict for it
EXPECTED: dict[str, set[str]] = {
    "random_bytes": {"bad_header", "truncated", "unknown_schema"},
    "truncated_avro": {"truncated", "bad_body"},
    "wrong_header": {"bad_header"},
    "unknown_fingerprint": {"unknown_schema"},
    "trailing_bytes": {"bad_body"},
    "wrong_type": {"wrong_type"},
    "nan_inf": {"validation"},
    "out_of_range": {"validation"},
    "bad_topology": {"validation"},
    "unknown_layer": {"unknown_layer"},
    "no_topology": {"unknown_model"},
    "oversized": {"oversized"},
    "empty_key": {"empty_key"},
    "key_mismatch": {"key_mismatch"},
}


@dataclass(frozen=True)
class Scale:
    models: int
    epochs: int
    bad: int


QUICK = Scale(models=12, epochs=4, bad=1000)
FULL = Scale(models=40, epochs=10, bad=5000)


class BadFactory:
    """Deterministic malformed messages of every kind, built from valid records of the valid stream."""

    def __init__(self, settings: Settings, sims: list[Any], seed: int = 0) -> None:
        self.t = settings.topics
        self.rng = random.Random(seed)
        self.sims = sims
        self.kinds = list(EXPECTED)

    def _sim(self) -> Any:
        return self.rng.choice(self.sims)

    def _valid(self, topic: str) -> tuple[str, bytes, dict, str]:
        """(record name, encoded value, record, model id) of a fresh valid record for ``topic``."""
        sim = self._sim()
        if topic == self.t.topology:
            record, name = sim.topology(), "ModelTopology"
        elif topic == self.t.health:
            record, name = self.rng.choice(sim.health_signals()), "HealthSignal"
        else:
            now_ms = int(time.time() * 1000)
            record = {"model_id": sim.model_id, "run_id": sim.run_id, "epoch": 0, "timestamp_ms": now_ms,
                      "train_loss": 0.5, "val_loss": 0.6, "train_accuracy": 0.6, "val_accuracy": 0.55,
                      "parameter_count": 1000, "final": False}
            name = "EpochOutcome"
        return name, encode(name, record), record, sim.model_id

    def make(self, kind: str, k: int) -> tuple[str, bytes | None, bytes]:
        rng, t = self.rng, self.t
        topic = rng.choice([t.topology, t.health, t.outcomes])
        name, value, record, model_id = self._valid(topic)
        key: bytes | None = model_id.encode()
        if kind == "random_bytes":
            value = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 120)))
        elif kind == "truncated_avro":
            value = value[:rng.randint(0, len(value) - 1)]
        elif kind == "wrong_header":
            value = bytes([rng.choice([0x00, 0xC3, 0x7B]), rng.choice([0x00, 0x02, 0xFF])]) + value[2:]
            if value[:2] == b"\xc3\x01":
                value = b"\x00\x00" + value[2:]
        elif kind == "unknown_fingerprint":
            value = value[:2] + bytes(rng.getrandbits(8) for _ in range(8)) + value[10:]
        elif kind == "trailing_bytes":
            value = value + bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 16)))
        elif kind == "wrong_type":
            topic, value = self._wrong_type(model_id)
        elif kind == "nan_inf":
            topic, value = self._numbers(model_id, [math.nan, math.inf, -math.inf])
        elif kind == "out_of_range":
            topic, value = self._out_of_range(model_id)
        elif kind == "bad_topology":
            topic = t.topology
            record = self._sim().topology()
            model_id = record["model_id"]
            key = model_id.encode()
            if k % 2:
                record["layers"] = record["layers"] + [dict(record["layers"][0])]  # duplicate layer name
            else:
                record["edges"] = record["edges"] + [{"source": "layers.0", "target": "nowhere"}]
            value = encode("ModelTopology", record)
        elif kind == "unknown_layer":
            topic = t.health
            sim = self._sim()
            signal = dict(rng.choice(sim.health_signals()), layer_name=f"layers.{900 + k % 50}")
            key, value = sim.model_id.encode(), encode("HealthSignal", signal)
        elif kind == "no_topology":
            topic = t.health
            ghost = f"ghost-{k % 20:02d}"
            signal = dict(rng.choice(self._sim().health_signals()), model_id=ghost, run_id=f"{ghost}-run")
            key, value = ghost.encode(), encode("HealthSignal", signal)
        elif kind == "oversized":
            if k % 2:
                value = bytes(rng.getrandbits(8) for _ in range(64)) * (MAX_MESSAGE_BYTES // 64 + 2)
            else:  # a well-formed topology that is simply too big
                topic = t.topology
                record = self._sim().topology()
                key = record["model_id"].encode()
                layer = record["layers"][0]
                record["layers"] = [dict(layer, name=f"wide.{i}") for i in range(MAX_MESSAGE_BYTES // 20)]
                record["edges"] = []
                value = encode("ModelTopology", record)
        elif kind == "empty_key":
            # A compacted topic (topology) refuses null keys at the broker: use the empty key there.
            key = b"" if topic == t.topology or k % 2 else None
        elif kind == "key_mismatch":
            key = f"not-{model_id}".encode()
        else:
            raise ValueError(kind)
        return topic, key, value

    def _wrong_type(self, model_id: str) -> tuple[str, bytes]:
        """A valid Avro record of another schema on a topic where it does not belong."""
        t, rng = self.t, self.rng
        sim = next(s for s in self.sims if s.model_id == model_id)
        signal = rng.choice(sim.health_signals())
        command = {"decision_id": "d-x", "model_id": model_id, "epoch": 1, "timestamp_ms": 1, "action": "GERMINATE",
                   "layer_name": "layers.0", "seed_index": 0, "kernel": "lowrank", "policy_version": "x",
                   "probability": 0.5}
        outcome = {"model_id": model_id, "run_id": sim.run_id, "epoch": 0, "timestamp_ms": 1, "train_loss": 0.5,
                   "val_loss": 0.6, "train_accuracy": 0.6, "val_accuracy": 0.5, "parameter_count": 1, "final": False}
        choices = [
            (t.outcomes, encode("HealthSignal", signal)),
            (t.topology, encode("HealthSignal", signal)),
            (t.health, encode("EpochOutcome", outcome)),
            (t.topology, encode("EpochOutcome", outcome)),
            (t.outcomes, encode("AdaptationCommand", command)),
            (t.health, encode("ModelTopology", sim.topology())),
        ]
        return rng.choice(choices)

    def _numbers(self, model_id: str, values: list[float]) -> tuple[str, bytes]:
        t, rng = self.t, self.rng
        sim = next(s for s in self.sims if s.model_id == model_id)
        bad = rng.choice(values)
        if rng.random() < 0.5:
            field = rng.choice(["health_score", "activation_variance", "gradient_norm", "avg_correlation"])
            if rng.random() < 0.5:
                return t.health, self._bad_batch(sim, {field: bad})
            return t.health, encode("HealthSignal", dict(rng.choice(sim.health_signals()), **{field: bad}))
        field = rng.choice(["train_loss", "val_loss", "train_accuracy", "val_accuracy"])
        outcome = {"model_id": model_id, "run_id": sim.run_id, "epoch": 0, "timestamp_ms": 1, "train_loss": 0.5,
                   "val_loss": 0.6, "train_accuracy": 0.6, "val_accuracy": 0.5, "parameter_count": 1, "final": False}
        return t.outcomes, encode("EpochOutcome", dict(outcome, **{field: bad}))

    def _out_of_range(self, model_id: str) -> tuple[str, bytes]:
        t, rng = self.t, self.rng
        sim = next(s for s in self.sims if s.model_id == model_id)
        signal = rng.choice(sim.health_signals())
        changes = [{"health_score": 1.5}, {"dead_neuron_ratio": -0.2}, {"avg_correlation": 3.0},
                   {"epoch": -1}, {"gradient_norm": -1.0}, {"active_seeds": signal["total_seeds"] + 1}]
        if rng.random() < 0.35:
            return t.health, self._bad_batch(sim, rng.choice(changes[:-1]))
        if rng.random() < 0.7:
            return t.health, encode("HealthSignal", dict(signal, **rng.choice(changes)))
        outcome = {"model_id": model_id, "run_id": sim.run_id, "epoch": 0, "timestamp_ms": 1, "train_loss": 0.5,
                   "val_loss": 0.6, "train_accuracy": 0.6, "val_accuracy": 0.5, "parameter_count": 1, "final": False}
        change = rng.choice([{"val_accuracy": 1.7}, {"train_loss": -0.1}, {"epoch": -3}, {"train_accuracy": -0.5}])
        return t.outcomes, encode("EpochOutcome", dict(outcome, **change))


    def _bad_batch(self, sim: Any, change: dict[str, Any]) -> bytes:
        """A HealthBatch of two rounds (as hosts send them) with one item of one column replaced."""
        from schemas.health_batch import health_batch

        batch = health_batch(sim.model_id, sim.run_id, [sim.health_signals(), sim.health_signals()])
        (field, bad), = change.items()
        column = batch[field]
        column[self.rng.randrange(len(column))] = bad
        return encode("HealthBatch", batch)


def run(env: ChaosEnv, quick: bool = False, scale: Scale | None = None, seed: int = 0) -> dict[str, Any]:
    from hosts.simulation import SimulatedModel

    scale = scale or (QUICK if quick else FULL)
    started = time.monotonic()
    settings = env.settings("bad_input", partitions=2, park_seconds=PARK_SECONDS,
                            max_message_bytes=MAX_MESSAGE_BYTES)
    t = settings.topics
    observer = Observer(settings)
    observer.start()
    worker = env.start_worker(settings, TAMIYO_PARK_SECONDS=str(PARK_SECONDS),
                              TAMIYO_MAX_MESSAGE_BYTES=str(MAX_MESSAGE_BYTES), TAMIYO_EPSILON="0.1")
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(scale.models)]
    sims = [SimulatedModel(f"valid-{i:03d}", rng, epochs_per_run=1000) for i, rng in enumerate(rngs)]
    factory = BadFactory(settings, sims, seed)

    # The valid stream: topologies first (as hosts do), then per epoch signals and an outcome per model.
    valid: list[tuple[str, bytes | None, bytes, Any]] = [
        (t.topology, s.model_id.encode(), encode("ModelTopology", s.topology()), "valid") for s in sims]
    stream: list[tuple[str, bytes | None, bytes, Any]] = []
    for _ in range(scale.epochs):
        for s in sims:
            for _round in range(s.signals_per_epoch):
                stream += [(t.health, s.model_id.encode(), encode("HealthSignal", x), "valid")
                           for x in s.health_signals()]
            stream.append((t.outcomes, s.model_id.encode(), encode("EpochOutcome", s.end_epoch()), "valid"))
    bad_items = [(*factory.make(kind, k), kind) for k in range(scale.bad)
                 for kind in [factory.kinds[k % len(factory.kinds)]]]
    # Interleave: every bad message goes to a random place in the valid stream.
    rng = random.Random(seed)
    slots: dict[int, list] = defaultdict(list)
    for item in bad_items:
        slots[rng.randrange(len(stream) + 1)].append(item)
    mixed: list[tuple[str, bytes | None, bytes, Any]] = []
    for i in range(len(stream) + 1):
        mixed.extend(slots.get(i, []))
        if i < len(stream):
            mixed.append(stream[i])

    ready_s = worker.wait_ready()
    progress(f"bad_input: worker ready in {ready_s:.1f}s; producing {len(valid) + len(stream)} valid and "
             f"{len(bad_items)} bad messages")
    delivered = produce_with_positions(settings, valid)
    delivered += produce_with_positions(settings, mixed, **{"max.in.flight.requests.per.connection": 5})
    bad = {pos: label for pos, label in delivered if label != "valid"}
    produced_at = time.monotonic()
    result, scan = audit(observer, settings, bad, timeout=120 if not quick else 90)
    drained_s = time.monotonic() - produced_at
    alive = worker.alive()

    # Verdicts per kind: dead-lettered, with an expected error kind, with reason and origin.
    by_kind: dict[str, dict[str, Any]] = {}
    wrong_reason = 0
    with observer.lock:
        for pos, kind in bad.items():
            entry = by_kind.setdefault(kind, {"sent": 0, "dead_lettered": 0, "error_kinds": Counter()})
            entry["sent"] += 1
            letter = observer.dead.get(pos)
            if letter is None:
                continue
            entry["dead_lettered"] += 1
            entry["error_kinds"][letter["error_kind"]] += 1
            if letter["error_kind"] not in EXPECTED[kind] or not letter["reason"]:
                wrong_reason += 1
    for entry in by_kind.values():
        entry["error_kinds"] = dict(entry["error_kinds"])
    valid_outcomes = {o for pos, o in scan.epoch_outcomes.items() if pos not in bad}
    # With a backlog the worker decides only the newest epoch of a model within one batch (older
    # epochs of the same model are coalesced), so the check is: every model's last epoch is decided.
    last: dict[str, tuple[str, str, int]] = {}
    for o in valid_outcomes:
        if o[0] not in last or o[2] > last[o[0]][2]:
            last[o[0]] = o

    def decided_now() -> set[tuple[str, str, int]]:
        with observer.lock:
            return {(d.model_id, d.run_id, d.epoch) for d in observer.decisions}
    try:  # a decision may wait briefly for its epoch's signals (TAMIYO_SIGNAL_WAIT_SECONDS)
        wait_until(lambda: set(last.values()) <= decided_now(), 30, 0.3, "decisions for every last epoch")
    except TimeoutError:
        pass
    decided = decided_now()
    undecided = len(set(last.values()) - decided)
    coalesced = len(valid_outcomes - decided) - undecided
    observer.stop()
    worker_log = worker.log()
    worker.stop()

    checks = {
        "worker_never_stopped": alive,
        "every_bad_message_dead_lettered": result.missing_dead_letters == 0 and result.dead_lettered == len(bad),
        "dead_letters_carry_expected_reason": wrong_reason == 0,
        "no_valid_message_dead_lettered": result.wrongly_dead_lettered == 0,
        "every_valid_message_archived": result.lost == 0,
        "every_model_decided_on_its_last_epoch": undecided == 0,
        "at_least_1000_bad": len(bad) >= 1000 or scale.bad < 1000,
        "many_kinds": len(by_kind) >= 10,
    }
    return scenario_result(
        checks, lost=result.lost, crashes=0, duplicate_applies=result.duplicate_applies, bad_inputs=len(bad),
        dead_lettered=result.dead_lettered,
        valid_inputs=result.valid_inputs,
        archived_duplicates=result.archived_duplicates,
        wrong_reason=wrong_reason,
        wrongly_dead_lettered=result.wrongly_dead_lettered,
        valid_epoch_outcomes=len(valid_outcomes),
        undecided_last_epochs=undecided,
        coalesced_epoch_outcomes=coalesced,
        decisions=result.decisions,
        by_kind=by_kind,
        park_seconds=PARK_SECONDS,
        max_message_bytes=MAX_MESSAGE_BYTES,
        drain_seconds=round(drained_s, 1),
        worker_exit_after_stop=worker.returncode,
        worker_logged_tracebacks=worker_log.count("Traceback"),
        lost_examples=result.lost_examples,
        seconds=round(time.monotonic() - started, 1),
    )
