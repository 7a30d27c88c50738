"""Episodes and the reward join: finished, dead and live runs, duplicates, and replay from Kafka."""

from __future__ import annotations

import time

import numpy as np
import pytest

from training.episodes import RewardConfig, group_episodes, redecided_ids, same_action, transitions, unmatched_ids
from training.replay import ExperienceRecord

CFG = RewardConfig(horizon=2, parameter_cost=1e-4, default_reward=-0.05, dead_after_s=120.0)
FEATURES = ["health_mean"]


def decision(model: str, epoch: int, ts: int, action: int = 0, dist=(0.5, 0.25, 0.25), did: str | None = None) -> dict:
    return {
        "decision_id": did or f"{model}-d{epoch}", "model_id": model, "run_id": "run-1", "epoch": epoch,
        "timestamp_ms": ts, "trigger": "epoch_end", "policy_version": "heuristic-v1",
        "action": "WAIT" if action == 0 else "GERMINATE", "layer_name": None if action == 0 else "layers.0",
        "seed_index": None if action == 0 else 0, "kernel": None if action == 0 else "mlp_small",
        "action_index": action, "propensity": float(dist[action]), "distribution": list(dist),
        "kernels": ["mlp_small", "mlp_wide"], "value_estimate": 0.0, "gate": "none", "feature_names": FEATURES,
        "layer_names": ["layers.0"], "node_features": [[0.25 + epoch / 10]], "edge_source": [], "edge_target": [],
    }


def epoch_outcome(model: str, epoch: int, ts: int, val_loss: float, final: bool = False) -> dict:
    return {"model_id": model, "run_id": "run-1", "epoch": epoch, "timestamp_ms": ts, "train_loss": val_loss,
            "val_loss": val_loss, "train_accuracy": 0.5, "val_accuracy": 0.5, "parameter_count": 1000,
            "final": final}


def command_outcome(model: str, epoch: int, ts: int, status: str, delta: int) -> dict:
    return {"decision_id": f"{model}-d{epoch}", "model_id": model, "run_id": "run-1", "epoch": epoch,
            "timestamp_ms": ts, "status": status, "reason": "", "parameter_delta": delta}


def scenario(t0: int) -> tuple[list[tuple[str, dict]], int]:
    """Three runs, as (record name, value) in arrival order, and the data's end (ms).

    done: epochs 0..4, final at 4; an APPLIED command at epoch 1 (+1000 parameters), a REJECTED one
          at epoch 2; the decision at epoch 0 and the epoch-1 outcome arrive twice.
    dead: epochs 0..2, nothing for 1000 s before the end of the data.
    live: epochs 0..2, last record 10 s before the end of the data.
    """
    end = t0 + 1_000_000
    out: list[tuple[str, dict]] = []
    losses = [1.0, 0.9, 0.7, 0.6, 0.55]
    for e, loss in enumerate(losses):
        ts = t0 + e * 1000
        out.append(("EpochOutcome", epoch_outcome("done", e, ts, loss, final=e == 4)))
        out.append(("DecisionRecord", decision("done", e, ts + 1, action=1 if e in (1, 2) else 0)))
    out.append(("CommandOutcome", command_outcome("done", 1, t0 + 1500, "APPLIED", 1000)))
    out.append(("CommandOutcome", command_outcome("done", 2, t0 + 2500, "REJECTED", 0)))
    out.append(("DecisionRecord", decision("done", 0, t0 + 1)))  # redelivered
    out.append(("EpochOutcome", epoch_outcome("done", 1, t0 + 1000, 0.9)))  # redelivered
    for model, start in (("dead", t0), ("live", end - 12_000)):
        for e, loss in enumerate([2.0, 1.5, 1.2]):
            ts = start + e * 1000
            out.append(("EpochOutcome", epoch_outcome(model, e, ts, loss)))
            out.append(("DecisionRecord", decision(model, e, ts + 1)))
    return out, end


def as_records(items: list[tuple[str, dict]]) -> list[ExperienceRecord]:
    return [ExperienceRecord(name, value, 0, i, value["timestamp_ms"]) for i, (name, value) in enumerate(items)]


def by_id(steps):
    return {t.decision_id: t for t in steps}


def test_the_reward_join_over_finished_dead_and_live_runs() -> None:
    items, end = scenario(1_700_000_000_000)
    episodes = group_episodes(as_records(items))
    assert set(episodes) == {("done", "run-1"), ("dead", "run-1"), ("live", "run-1")}
    done = episodes["done", "run-1"]
    assert len(done.decisions) == 5 and len(done.epochs) == 5 and done.final_epoch == 4  # duplicates dropped
    steps = by_id(transitions(episodes, CFG, end))

    # finished run: r = val_loss[e] - val_loss[min(e + 2, 4)] - cost * applied parameters
    assert steps["done-d0"].reward == pytest.approx(1.0 - 0.7)
    assert steps["done-d1"].reward == pytest.approx(0.9 - 0.6 - 1e-4 * 1000)
    assert steps["done-d2"].reward == pytest.approx(0.7 - 0.55)  # REJECTED: no parameter cost
    assert steps["done-d3"].reward == pytest.approx(0.6 - 0.55)  # horizon cut at the final epoch
    assert steps["done-d4"].reward == 0.0 and steps["done-d4"].done and steps["done-d4"].next_state is None
    assert not any(steps[f"done-d{e}"].imputed or steps[f"done-d{e}"].done for e in range(4))
    assert steps["done-d1"].action == 1 and steps["done-d1"].propensity == 0.25
    np.testing.assert_allclose(steps["done-d0"].next_state.node_features, [[0.35]], rtol=1e-6)

    # the host died: outcomes that never came get the default reward, and the episode ends
    assert steps["dead-d0"].reward == pytest.approx(2.0 - 1.2) and not steps["dead-d0"].imputed
    for e in (1, 2):
        assert steps[f"dead-d{e}"].reward == CFG.default_reward and steps[f"dead-d{e}"].imputed
    assert steps["dead-d2"].done and steps["dead-d2"].next_state is None

    # still running: only decisions whose horizon has passed are kept, and nothing is "done"
    assert steps["live-d0"].reward == pytest.approx(2.0 - 1.2) and not steps["live-d0"].done
    assert "live-d1" not in steps and "live-d2" not in steps
    assert len(steps) == 5 + 3 + 1
    assert {t.run_id for t in steps.values()} == {"run-1"}


def test_a_live_run_becomes_dead_once_it_is_silent_long_enough() -> None:
    items, end = scenario(1_700_000_000_000)
    later = by_id(transitions(group_episodes(as_records(items)), CFG, end + 200_000))
    assert later["live-d1"].imputed and later["live-d2"].done


def test_wait_stays_legal_when_the_logged_policy_was_deterministic() -> None:
    items = [("EpochOutcome", epoch_outcome("m", 0, 1, 1.0)), ("EpochOutcome", epoch_outcome("m", 1, 2, 0.8, True)),
             ("DecisionRecord", decision("m", 0, 1, action=1, dist=(0.0, 1.0, 0.0)))]
    (step,) = transitions(group_episodes(as_records(items)), RewardConfig(horizon=1), 10)
    assert step.state.legal.tolist() == [True, True, False]
    assert step.propensity == 1.0 and step.reward == pytest.approx(0.2)


def test_legal_masks_of_many_distributions_are_their_supports_with_wait() -> None:
    from training.episodes import legal_masks

    dists = [np.array([0.0, 0.5, 0.0, 0.5]), [0.2, 0.0, 0.8], np.zeros(0), (1.0,), np.array([0.0, 0.0, 1.0])]
    masks = legal_masks(dists)
    assert [m.tolist() for m in masks] == [[True, True, False, True], [True, False, True], [], [True],
                                           [True, False, True]]
    assert all(m.dtype == bool for m in masks) and legal_masks([]) == []
    masks[0][2] = True  # views of one array, each its own slice
    assert masks[1].tolist() == [True, False, True]


def test_a_logged_legal_mask_beats_the_support_of_a_deterministic_distribution() -> None:
    """DecisionRecord v2 logs what was legal; without it (v1) the support stands in."""
    from training.episodes import legal_masks

    dists = [np.array([0.0, 1.0, 0.0, 0.0]), np.array([1.0, 0.0, 0.0])]
    logged = [bytes([1, 1, 1, 0]), bytes([1, 0, 1])]
    assert [m.tolist() for m in legal_masks(dists, logged)] == [[True, True, True, False], [True, False, True]]
    mixed = legal_masks(dists, [logged[0], None])
    assert [m.tolist() for m in mixed] == [[True, True, True, False], [True, False, False]]
    assert [m.tolist() for m in legal_masks(dists, [None, None])] == [[True, True, False, False],
                                                                       [True, False, False]]
    # through episodes: the state of a deterministic decision keeps every legal action
    items = [("EpochOutcome", epoch_outcome("m", 0, 1, 1.0)), ("EpochOutcome", epoch_outcome("m", 1, 2, 0.8, True)),
             ("DecisionRecord", decision("m", 0, 1, action=1, dist=(0.0, 1.0, 0.0)) | {"legal_mask": b"\x01\x01\x01"})]
    (step,) = transitions(group_episodes(as_records(items)), RewardConfig(horizon=1), 10)
    assert step.state.legal.tolist() == [True, True, True]


def test_records_of_other_types_are_ignored_and_outcomes_find_their_run() -> None:
    items, end = scenario(1_700_000_000_000)
    items = [("HealthSignal", {"model_id": "done", "run_id": "run-1", "timestamp_ms": 0})] + items[::-1]  # any order
    steps = by_id(transitions(group_episodes(as_records(items)), CFG, end))
    assert steps["done-d1"].reward == pytest.approx(0.9 - 0.6 - 1e-4 * 1000)
    assert len(steps) == 9


def command(record: dict) -> dict:
    """The AdaptationCommand a worker sends for a GERMINATE DecisionRecord."""
    return {"decision_id": record["decision_id"], "model_id": record["model_id"], "epoch": record["epoch"],
            "timestamp_ms": record["timestamp_ms"], "action": "GERMINATE", "layer_name": record["layer_name"],
            "seed_index": record["seed_index"], "kernel": record["kernel"],
            "policy_version": record["policy_version"], "probability": record["propensity"]}


def redecided(first: dict, second: dict, sent: list[dict], answers: list[dict] = ()) -> dict:
    """The record replay keeps for epoch 0 of model m, decided twice (``first`` then ``second``)
    with ``sent`` archived AdaptationCommands, in that order (left undecoded, as replay leaves them),
    and the hosts' CommandOutcomes ``answers``."""
    from schemas import encode

    items = [("EpochOutcome", epoch_outcome("m", 0, 1, 1.0)), ("DecisionRecord", first),
             *(("AdaptationCommand", c) for c in sent), ("DecisionRecord", second),
             *(("CommandOutcome", a) for a in answers),
             ("EpochOutcome", epoch_outcome("m", 1, 3, 0.8, final=True))]
    records = [ExperienceRecord(r.name, None, 0, r.offset, r.timestamp_ms, encode(r.name, r.value))
               if r.name == "AdaptationCommand" else r for r in as_records(items)]
    (step,) = [t for t in transitions(group_episodes(records), RewardConfig(horizon=1), 10) if t.epoch == 0]
    episodes = group_episodes(records)
    kept = episodes["m", "run-1"].decisions["m-d0"]
    assert redecided_ids(episodes) == (0 if same_action(first, second) else 1)
    assert step.action == kept["action_index"] and step.propensity == kept["propensity"]
    return kept


def test_of_differing_redecisions_replay_keeps_the_one_the_host_handled() -> None:
    wait = decision("m", 0, 1, action=0)
    germinate = decision("m", 0, 2, action=1)
    other = decision("m", 0, 2, action=2) | {"kernel": "mlp_wide"}
    # A worker crashed after its decision; the re-decision differs. Hosts handle the first command of an id.
    assert redecided(wait, germinate, [command(germinate)]) is germinate  # the WAIT was never applied
    assert redecided(germinate, wait, [command(germinate)]) is germinate
    assert redecided(germinate, other, [command(germinate), command(other)]) is germinate
    assert redecided(germinate, other, [command(other), command(germinate)]) is other  # first command lost
    assert redecided(germinate, wait, []) is wait  # no command reached the commands topic
    assert redecided(germinate, other, []) is germinate  # nothing matches: the first record
    # identical re-decisions (the usual at-least-once duplicate) keep the first record, as before
    again = dict(germinate, timestamp_ms=5)
    assert redecided(germinate, again, [command(again)]) is germinate


def answer(handled: dict, status: str = "APPLIED") -> dict:
    """A host's CommandOutcome v2 for epoch 0 of model m naming the command it handled."""
    return command_outcome("m", 0, 2, status, 10 if status == "APPLIED" else 0) | {
        name: handled[name] for name in ("action", "layer_name", "seed_index", "kernel")}


def test_a_command_outcome_v2_says_which_redecision_the_host_handled() -> None:
    germinate = decision("m", 0, 1, action=1)
    other = decision("m", 0, 2, action=2) | {"kernel": "mlp_wide"}
    # The host's word wins over the order of archived commands (here the handled one was not archived).
    assert redecided(germinate, other, [command(other)], [answer(germinate)]) is germinate
    assert redecided(germinate, other, [command(germinate)], [answer(other, "DUPLICATE")]) is other
    assert redecided(other, germinate, [], [answer(germinate, "REJECTED")]) is germinate
    # A v1 outcome (no action named) leaves it to the archived commands.
    v1 = {k: v for k, v in answer(germinate).items() if k not in ("action", "layer_name", "seed_index", "kernel")}
    assert redecided(germinate, other, [command(other)], [v1]) is other


def test_a_decision_whose_handled_record_is_not_in_the_data_is_left_out() -> None:
    """The replay window starts between two differing records of one id: the record it holds is not
    the command the host's outcome names, so training must not learn from it."""
    germinate, other = decision("m", 0, 1, action=1), decision("m", 0, 2, action=2) | {"kernel": "mlp_wide"}
    later = decision("m", 1, 3, action=0)
    items = [("EpochOutcome", epoch_outcome("m", 0, 1, 1.0)), ("DecisionRecord", other),
             ("CommandOutcome", answer(germinate, "DUPLICATE")), ("EpochOutcome", epoch_outcome("m", 1, 3, 0.8)),
             ("DecisionRecord", later), ("EpochOutcome", epoch_outcome("m", 2, 4, 0.7, final=True))]
    episodes = group_episodes(as_records(items))
    assert unmatched_ids(episodes) == 1 and list(episodes["m", "run-1"].decisions) == ["m-d1"]
    assert [t.epoch for t in transitions(episodes, RewardConfig(horizon=1), 10)] == [1]
    # the same data with the handled record: nothing is left out
    episodes = group_episodes(as_records([("DecisionRecord", germinate)] + items))
    assert unmatched_ids(episodes) == 0 and episodes["m", "run-1"].decisions["m-d0"] is germinate


def test_commands_are_decoded_only_for_differing_redecisions_and_bad_ones_are_passed_over(caplog) -> None:
    from schemas import encode

    wait, germinate = decision("m", 0, 1, action=0), decision("m", 0, 2, action=1)
    cmd = ExperienceRecord("AdaptationCommand", None, 0, 7, 2, encode("AdaptationCommand", command(germinate)))
    bad = ExperienceRecord("AdaptationCommand", None, 0, 6, 2, b"\xc3\x01 not a command")
    outcome = ("EpochOutcome", epoch_outcome("m", 0, 1, 1.0))
    group_episodes([bad, cmd] + as_records([outcome, ("DecisionRecord", wait), ("DecisionRecord", wait)]))
    assert cmd.value is None  # nothing to resolve: left as bytes
    episodes = group_episodes([bad, cmd] + as_records([outcome, ("DecisionRecord", wait), ("DecisionRecord", germinate)]))
    assert episodes["m", "run-1"].decisions["m-d0"] is germinate and cmd.value["decision_id"] == "m-d0"
    assert "undecodable AdaptationCommand at 0/6" in caplog.text


def produce_scenario(settings, typed: bool):  # type: ignore[no-untyped-def]
    """The scenario's records on the experience topic (with the archive's type header when ``typed``)."""
    from schemas import encode
    from streams.archive import TYPE_HEADER
    from streams.kafka.clients import make_producer

    t0 = int(time.time() * 1000) - 60_000
    items, end = scenario(t0)
    producer = make_producer(settings)
    for name, value in items:
        producer.produce(settings.topics.experience, key=value["model_id"].encode(), value=encode(name, value),
                         timestamp=value["timestamp_ms"], headers=[(TYPE_HEADER, name.encode())] if typed else None)
    return producer, items, t0, end


@pytest.mark.kafka
def test_replay_rebuilds_the_same_episodes_from_the_experience_topic(topics_ready) -> None:
    from training.replay import replay

    settings = topics_ready
    producer, items, t0, end = produce_scenario(settings, typed=False)
    producer.produce(settings.topics.experience, key=b"junk", value=b"not avro", timestamp=t0)
    assert producer.flush(30) == 0

    records, window = replay(settings, progress=False)
    assert window.records == len(items) and window.undecodable == 1
    replayed = by_id(transitions(group_episodes(records), CFG, end))
    expected = by_id(transitions(group_episodes(as_records(items)), CFG, end))
    assert replayed.keys() == expected.keys() and len(replayed) == 9
    for key, t in expected.items():
        assert replayed[key].reward == pytest.approx(t.reward) and replayed[key].imputed == t.imputed
        assert replayed[key].action == t.action and replayed[key].done == t.done

    # a time window: only the live run's records are at or after end - 12 s
    late, _ = replay(settings, start_ms=end - 12_000, progress=False)
    assert {r.value["model_id"] for r in late} == {"live"}


@pytest.mark.kafka
def test_replay_by_type_skips_other_records_undecoded_and_keeps_the_episodes(topics_ready) -> None:
    from schemas import encode
    from streams.archive import TYPE_HEADER
    from tests.samples import SAMPLES
    from training.episodes import EPISODE_TYPES
    from training.replay import replay

    settings = topics_ready
    producer, items, t0, end = produce_scenario(settings, typed=True)
    signal = encode("HealthSignal", SAMPLES["HealthSignal"])
    for _ in range(5):  # type header says HealthSignal: skipped without decoding, even if it were garbage
        producer.produce(settings.topics.experience, key=b"m", value=b"garbage", timestamp=t0,
                         headers=[(TYPE_HEADER, b"HealthSignal")])
    producer.produce(settings.topics.experience, key=b"m", value=signal, timestamp=t0)  # no header: decoded
    # A single-object value names its own schema: that decides, not a type header that says otherwise.
    stray = SAMPLES["EpochOutcome"] | {"model_id": "stray", "run_id": "stray-run"}
    producer.produce(settings.topics.experience, key=b"m", value=encode("EpochOutcome", stray), timestamp=t0,
                     headers=[(TYPE_HEADER, b"HealthSignal")])
    assert producer.flush(30) == 0

    records, window = replay(settings, progress=False, types=EPISODE_TYPES)
    wanted = [(n, v) for n, v in items if n in EPISODE_TYPES]
    assert {r.name for r in records} <= EPISODE_TYPES and window.records == len(records) == len(wanted) + 1
    assert [r.value["run_id"] for r in records if r.value["model_id"] == "stray"] == ["stray-run"]
    records = [r for r in records if r.value["model_id"] != "stray"]
    assert window.skipped == len(items) - len(wanted) + 6 and window.undecodable == 0
    assert window.as_dict()["skipped"] == window.skipped
    replayed = by_id(transitions(group_episodes(records), CFG, end))
    expected = by_id(transitions(group_episodes(as_records(items)), CFG, end))
    assert {k: (t.reward, t.action) for k, t in replayed.items()} == {k: (t.reward, t.action)
                                                                      for k, t in expected.items()}


@pytest.mark.kafka
def test_replay_leaves_undecoded_types_as_bytes_until_asked(topics_ready) -> None:
    from schemas import encode
    from streams.kafka.clients import make_producer
    from training.episodes import COMMANDS_UNDECODED, EPISODE_TYPES
    from training.replay import replay

    settings = topics_ready
    sent = command(decision("m", 0, 1, action=1))
    producer = make_producer(settings)
    for name, value in (("AdaptationCommand", sent), ("EpochOutcome", epoch_outcome("m", 0, 1, 1.0))):
        producer.produce(settings.topics.experience, key=b"m", value=encode(name, value))
    assert producer.flush(30) == 0
    records, window = replay(settings, progress=False, types=EPISODE_TYPES, undecoded=COMMANDS_UNDECODED)
    (cmd,) = [r for r in records if r.name == "AdaptationCommand"]
    (outcome,) = [r for r in records if r.name == "EpochOutcome"]
    assert cmd.value is None and cmd.raw == encode("AdaptationCommand", sent) and outcome.value["epoch"] == 0
    assert cmd.decoded() == sent and cmd.value == sent and window.records == 2


def test_gc_paused_freezes_what_it_kept_alive_and_reenables_the_collector() -> None:
    import gc

    from training.replay import gc_paused

    before = gc.get_freeze_count()
    try:
        with gc_paused():
            with gc_paused():  # nested: only the outermost freezes and re-enables
                kept = [[i] for i in range(10_000)]
            # nothing frozen yet (other threads may free frozen objects meanwhile: not == before)
            assert not gc.isenabled() and gc.get_freeze_count() < before + len(kept)
        assert gc.isenabled() and gc.get_freeze_count() >= before + len(kept)
    finally:
        gc.unfreeze()


def test_decisions_with_the_same_edges_share_one_read_only_array() -> None:
    from training.episodes import _states

    def decision(src: list[int], dst: list[int]) -> dict:
        return {"node_features": np.zeros((3, 2), np.float32), "layer_names": ["a", "b", "c"],
                "distribution": np.array([0.5, 0.5, 0.0]), "edge_source": src, "edge_target": dst}

    states = _states([decision([0, 1], [1, 2]), decision([0, 1], [1, 2]), decision([0], [2]), decision([0], [2])])
    assert states[0].edge_index is states[1].edge_index and states[2].edge_index is states[3].edge_index
    assert states[0].edge_index.tolist() == [[0, 1], [1, 2]] and states[2].edge_index.tolist() == [[0], [2]]
    with pytest.raises(ValueError):
        states[0].edge_index[0, 0] = 5  # shared, so nobody may change it in place
    assert states[0].legal.tolist() == [True, True, False]
