"""A worker dies between delivering a decision and saving its gate state; the next one decides the
epoch again, differently. The host's answers (CommandOutcome v2) put the gate right, and replay
keeps the decision the host applied — on a real broker, with real worker processes."""

from __future__ import annotations

import time

import pytest

from hosts.commands import CommandLedger, apply_once
from schemas import decode, encode
from streams.archive import TYPE_HEADER
from streams.kafka.reader import header
from tests.samples import SAMPLES
from tests.streams.crash_after_command import EXIT_CODE
from tests.streams.kafka_io import TopicCollector, produce_records
from tests.streams.test_worker_kafka import decisions_in, free_port, scrape, topology

pytestmark = pytest.mark.kafka

MODEL = "m-crash"
WORKER_ENV = dict(TAMIYO_EPSILON="0.0", TAMIYO_COOLDOWN_EPOCHS="3", TAMIYO_WINDOW_CLOSE_TRIGGER="off",
                  TAMIYO_WINDOW_EXPIRES_SECONDS="600")


def reports(epoch: int, health: dict[str, float], steps: list[int], ts: int) -> list[dict]:
    """One HealthSignal per layer per step; layers not in ``health`` are healthy."""
    return [dict(SAMPLES["HealthSignal"], model_id=MODEL, layer_name=f"layers.{i}", epoch=epoch, step=step,
                 timestamp_ms=ts, total_seeds=2, active_seeds=0, seed_states=["DORMANT", "DORMANT"],
                 health_score=health.get(f"layers.{i}", 0.95)) for step in steps for i in range(4)]


def epoch_end(epoch: int, last_step: int, ts: int) -> dict:
    return dict(SAMPLES["EpochOutcome"], model_id=MODEL, epoch=epoch, timestamp_ms=ts, last_report_step=last_step)


def answer_commands(settings, ledger: CommandLedger, commands: list) -> list[dict]:  # type: ignore[no-untyped-def]
    """What a host does: apply each command once by decision id, answer every one (v2 outcomes)."""
    answers = [apply_once(ledger, decode(m.value()).value, lambda c: 100, MODEL, "run-1", 9, int(time.time() * 1000))
               for m in commands]
    produce_records(settings, settings.topics.outcomes, "CommandOutcome", answers)
    return answers


def test_after_a_crash_the_gate_and_replay_follow_the_command_the_host_applied(topics_ready, start_worker) -> None:
    settings = topics_ready
    topics = settings.topics
    commands = TopicCollector(settings, topics.commands)
    experience = TopicCollector(settings, topics.experience)
    ledger = CommandLedger()
    ledger.new_run("run-1")
    t0 = int(time.time() * 1000)

    # Epoch 1, first worker: layers.2 is sick. The outcome names step 200 as the epoch's last report,
    # which has not arrived: the worker waits 3 s, decides on what it has, delivers GERMINATE layers.2
    # and dies before its gate state is written.
    first = start_worker(module="tests.streams.crash_after_command", TAMIYO_SIGNAL_WAIT_SECONDS="3", **WORKER_ENV)
    produce_records(settings, topics.topology, "ModelTopology", [dict(topology(MODEL), timestamp_ms=t0)])
    produce_records(settings, topics.health, "HealthSignal", reports(1, {"layers.2": 0.05}, [100], t0))
    produce_records(settings, topics.outcomes, "EpochOutcome", [epoch_end(1, 200, t0 + 1)])
    commands.wait_for(lambda ms: len(ms) >= 1, timeout=120, alive=lambda: True)
    assert first.process.wait(60) == EXIT_CODE, first.log()[-3000:]
    (applied,) = answer_commands(settings, ledger, commands.messages)
    assert (applied["status"], applied["layer_name"]) == ("APPLIED", "layers.2")
    decision_id = applied["decision_id"]

    # The epoch's later reports arrive: now layers.1 is the sickest. The next worker reads the
    # outcome again (never committed), waits for step 200 and decides epoch 1 again: layers.1.
    produce_records(settings, topics.health, "HealthSignal",
                    reports(1, {"layers.1": 0.0, "layers.2": 0.95}, [150, 175, 200], t0))
    port = free_port()
    second = start_worker(TAMIYO_SIGNAL_WAIT_SECONDS="60", TAMIYO_METRICS_PORT=str(port), **WORKER_ENV)
    commands.wait_for(lambda ms: len(ms) >= 2, timeout=120, alive=second.alive)
    redecided = decode(commands.messages[1].value()).value
    assert (redecided["decision_id"], redecided["layer_name"]) == (decision_id, "layers.1"), redecided
    (duplicate,) = answer_commands(settings, ledger, commands.messages[1:])
    assert (duplicate["status"], duplicate["layer_name"]) == ("DUPLICATE", "layers.2")
    experience.wait_for(lambda ms: sum(header(m, TYPE_HEADER) == "CommandOutcome" for m in ms) >= 2, timeout=60,
                        alive=second.alive)

    # Epoch 2, in a later window: layers.2 is the sickest. The host adapted it at epoch 1 (cooldown 3),
    # which only the host's answers told this worker: it must not adapt it again.
    t2 = t0 + 25_000
    produce_records(settings, topics.health, "HealthSignal", reports(2, {"layers.2": 0.0}, [300], t2))
    produce_records(settings, topics.outcomes, "EpochOutcome", [epoch_end(2, 300, t2 + 1)])
    experience.wait_for(lambda ms: any(d["epoch"] == 2 for d in decisions_in(ms)), timeout=90, alive=second.alive)
    (later,) = [d for d in decisions_in(experience.messages) if d["epoch"] == 2]
    assert later["layer_name"] != "layers.2", later
    assert second.alive()
    deadline, corrections = time.monotonic() + 30, 0.0
    while corrections < 1 and time.monotonic() < deadline:  # counters are exported every 5 s
        time.sleep(1.0)
        corrections = sum(m.value for m in scrape(port)["tamiyo_events"]
                          if m.name.endswith("_total") and m.labels["kind"] == "host_corrections")
    # The APPLIED answer (the gate did not know layers.2), and the DUPLICATE too when it came second
    # (the gate then still held the re-decision's seed); never the answers of an ordinary epoch.
    assert 1 <= corrections <= 2

    # Both records of epoch 1 are archived; replay keeps the one the host applied.
    from training.episodes import COMMANDS_UNDECODED, EPISODE_TYPES, group_episodes
    from training.replay import replay

    assert sorted(d["layer_name"] for d in decisions_in(experience.messages) if d["epoch"] == 1) == \
        ["layers.1", "layers.2"]
    records, _ = replay(settings, progress=False, types=EPISODE_TYPES, undecoded=COMMANDS_UNDECODED)
    kept = group_episodes(records)[MODEL, "run-1"].decisions[decision_id]
    assert (kept["action"], kept["layer_name"]) == ("GERMINATE", "layers.2")
    commands.close()
    experience.close()
