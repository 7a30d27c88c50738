"""The window-close trigger on a real worker and broker: signals without an EpochOutcome are decided
once their window closes, and an epoch is decided once whichever trigger comes first."""

from __future__ import annotations

import math
import re
import time

import pytest

from hosts.partitioner import partition_for
from schemas import decode
from streams.archive import TYPE_HEADER
from streams.decisions import decision_id
from streams.kafka.reader import header
from tamiyo.chaos.harness import wait_until
from tamiyo.chaos.worker_crash import assigned_partitions
from tests.streams.kafka_io import TopicCollector, produce_records
from tests.streams.test_worker_kafka import decisions_in, outcome, signals, topology

pytestmark = pytest.mark.kafka


FAST_WINDOWS = {"TAMIYO_EPSILON": "0.0", "TAMIYO_WINDOW_SECONDS": "2", "TAMIYO_WINDOW_CLOSE_GRACE_SECONDS": "1"}


def signals_of_epochs(model_ids: list[str], epochs: range) -> list[dict]:
    """Signals of several epochs, all stamped with one time so that they share one window (produced
    across a window boundary, the first window's close would already decide the epoch before)."""
    stamp = int(time.time() * 1000)
    return [dict(s, timestamp_ms=stamp) for e in epochs for m in model_ids for s in signals(m, e)]


def by_model(messages: list) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for record in decisions_in(messages):
        found.setdefault(record["model_id"], []).append(record)
    return found


def test_closed_window_decides_without_outcome_and_each_epoch_once(topics_ready, start_worker) -> None:
    settings = topics_ready
    topics = settings.topics
    worker = start_worker(**FAST_WINDOWS, TAMIYO_SIGNAL_WAIT_SECONDS="15", TAMIYO_PARK_SECONDS="600")
    experience = TopicCollector(settings, topics.experience)
    commands = TopicCollector(settings, topics.commands)
    produce_records(settings, topics.topology, "ModelTopology", [topology("m-silent"), topology("m-talks")])
    time.sleep(0.5)
    # Epochs 0 and 1 ended, epoch 2 is running.
    produce_records(settings, topics.health, "HealthSignal", signals_of_epochs(["m-silent", "m-talks"], range(3)))
    # An outcome of a model without topology, on m-silent's partition, waits (parked, its commit held)
    # for the whole test: the partition's other models are still decided when their window closes.
    orphan = next(m for m in (f"m-orphan-{i}" for i in range(100))
                  if partition_for(m.encode(), settings.partitions) == partition_for(b"m-silent", settings.partitions))
    produce_records(settings, topics.outcomes, "EpochOutcome", [outcome("m-talks", 1), outcome(orphan, 1)])

    experience.wait_for(lambda ms: {"m-silent", "m-talks"} <= set(by_model(ms)), timeout=90, alive=worker.alive)
    experience.poll(2 * (2 + 1) + 2)  # two more window closes: nothing else may be decided
    decided = by_model(experience.messages)
    assert orphan not in decided
    silent, = decided["m-silent"]
    assert (silent["epoch"], silent["trigger"]) == (1, "window_close")
    assert silent["decision_id"] == decision_id("m-silent", "run-1", 1)
    assert silent["action"] == "GERMINATE" and silent["layer_name"] == "layers.2"  # the sick layer
    talks, = decided["m-talks"]  # its outcome came first; the closed window adds nothing
    assert (talks["epoch"], talks["trigger"]) == (1, "epoch_end")
    sent = commands.wait_for(lambda ms: len(ms) >= 2, timeout=30)
    assert sorted(decode(m.value()).value["decision_id"] for m in sent) == sorted(
        [silent["decision_id"], talks["decision_id"]])
    assert "window closed without an EpochOutcome: deciding m-silent epoch 1" in worker.log()

    # m-silent's outcome of epoch 1 arrives late: that epoch stays decided once. Epoch 2's outcome
    # comes before any window could show epoch 3, so its own trigger decides it.
    produce_records(settings, topics.outcomes, "EpochOutcome", [outcome("m-silent", 1), outcome("m-silent", 2)])
    experience.wait_for(lambda ms: len(by_model(ms)["m-silent"]) >= 2, timeout=60, alive=worker.alive)
    experience.poll(2 * (2 + 1) + 2)
    decided = by_model(experience.messages)
    assert sorted((d["epoch"], d["trigger"]) for d in decided["m-silent"]) == [(1, "window_close"), (2, "epoch_end")]
    assert len(decided["m-talks"]) == 1
    assert worker.alive()
    for collector in (experience, commands):
        collector.close()


def test_after_a_rebalance_only_the_new_owner_of_a_model_decides_it(topics_ready, start_worker) -> None:
    """One worker folds every model's window; a second joins and takes one partition before the
    window closes. The first keeps the windows it wrote for that partition in memory (Faust's memory
    store drops only recovered keys of revoked partitions), so only the scan's ownership checks stop
    it from deciding those models too: the partitions it owns, and the caught-up check, which needs
    the partition's offsets (with both removed this test fails: those models are decided twice)."""
    settings = topics_ready
    topics = settings.topics
    # The signals' window must close only after the second worker has joined: it took ~7 s on an
    # idle 2-core machine, so a window that closes 30-40 s after the signals leaves room for a busy one.
    window_s, join_budget_s = 10, 30
    env = dict(FAST_WINDOWS, TAMIYO_WINDOW_SECONDS=str(window_s), TAMIYO_WINDOW_EXPIRES_SECONDS="180")
    workers = [start_worker(**env)]

    def alive() -> bool:
        return all(w.alive() for w in workers)

    def owned() -> list[set[int]]:
        return [assigned_partitions(w, topics.outcomes) for w in workers]

    wait_until(lambda: owned() == [{0, 1}], 180, what="the first worker owns both partitions", alive=alive)
    names = [f"m-{i:02d}" for i in range(40)]
    models = [m for p in (0, 1) for m in [n for n in names if partition_for(n.encode(), settings.partitions) == p][:3]]
    experience = TopicCollector(settings, topics.experience)
    produce_records(settings, topics.topology, "ModelTopology", [topology(m) for m in models])
    # Stamp the signals in the first window that closes at least join_budget_s from now (it may start
    # ahead of now): time for the second worker to start and take its partition.
    stamp_s = math.ceil((time.time() + join_budget_s) / window_s) * window_s - window_s
    produce_records(settings, topics.health, "HealthSignal",
                    [dict(s, timestamp_ms=int(stamp_s * 1000) + 1) for s in signals_of_epochs(models, range(3))])
    experience.wait_for(lambda ms: sum(header(m, TYPE_HEADER) == "HealthSignal" for m in ms) == 6 * 3 * 4,
                        timeout=60, alive=alive)  # archived: the first worker folded them all
    workers.append(start_worker(**env))

    def settled() -> bool:
        first, second = owned()
        return bool(first) and bool(second) and not first & second and first | second == {0, 1}

    wait_until(settled, 180, what="each worker owns one partition", alive=alive)
    assert not by_model(experience.poll(0.5)), "decided before the window closed"
    assert time.time() < stamp_s + window_s, "the second worker took longer than the window to join"

    experience.wait_for(lambda ms: set(by_model(ms)) >= set(models), timeout=join_budget_s + window_s + 60,
                        alive=alive)
    experience.poll(2 * (2 + 1) + 2)
    decided = by_model(experience.messages)
    assert {m: [(d["epoch"], d["trigger"]) for d in decided[m]] for m in models} == {
        m: [(1, "window_close")] for m in models}
    assert settled()  # no rebalance in between
    for worker, partitions in zip(workers, owned()):
        named = {m for line in re.findall(r"deciding (.*)", worker.log()) for m in re.findall(r"m-\d\d", line)}
        assert named and {partition_for(m.encode(), settings.partitions) for m in named} <= partitions
    experience.close()
