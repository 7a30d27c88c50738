"""Decisions remember the seeds they commanded until telemetry shows them taken (pure logic)."""

from __future__ import annotations

import numpy as np

from models.decide import GateConfig
from models.graph import update_layer_aggregate
from models.heuristic import ThresholdHeuristic
from streams.decisions import DueModel, decide, follow_host, prepare, unapplied_commands
from tests.samples import SAMPLES

CFG = GateConfig(confidence_threshold=0.5, cooldown_epochs=1, max_adaptations_per_epoch=1, epsilon=0.0)
TOPOLOGY = SAMPLES["ModelTopology"]  # layers.0 and layers.1, two seeds each


def window(epoch: int, sick_states: list[str], run_id: str = "run-1") -> dict:
    """layers.1 is sick (the heuristic germinates it whenever it may); layers.0 is healthy."""
    layers = {}
    for name in ("layers.0", "layers.1"):
        signal = dict(SAMPLES["HealthSignal"], layer_name=name, epoch=epoch, run_id=run_id, active_seeds=0,
                      health_score=0.1 if name == "layers.1" else 0.9,
                      seed_states=sick_states if name == "layers.1" else ["DORMANT", "DORMANT"])
        layers[name] = update_layer_aggregate(None, signal)
    return {"run_id": run_id, "epoch": epoch, "layers": layers}


def decide_epoch(epoch: int, sick_states: list[str], gate: dict | None) -> tuple[DueModel, object]:
    outcome = dict(SAMPLES["EpochOutcome"], epoch=epoch, run_id="run-1")
    item = prepare(outcome, TOPOLOGY, [window(epoch, sick_states)], gate, CFG)
    assert item is not None
    policy = ThresholdHeuristic()
    made, = decide([item], policy, policy.version, CFG)
    return item, made


def sick_layer_seed(item: DueModel) -> int | None:
    return item.graph.dormant_seed[item.graph.layer_names.index("layers.1")]


def test_a_commanded_seed_is_not_commanded_again_while_telemetry_still_shows_it_dormant() -> None:
    _, first = decide_epoch(3, ["DORMANT", "DORMANT"], None)
    assert first.command is not None and (first.command["layer_name"], first.command["seed_index"]) == ("layers.1", 0)
    assert first.gate["commanded"] == {first.record["decision_id"]: ["layers.1", 0]}
    # The host has not applied it yet (under load commands arrive epochs late): its next telemetry still
    # shows seed 0 DORMANT. The cooldown is over, so the layer may be adapted again, but with seed 1.
    item, second = decide_epoch(4, ["DORMANT", "DORMANT"], first.gate)
    assert sick_layer_seed(item) == 1
    assert second.command is not None and second.command["seed_index"] == 1
    assert set(second.gate["commanded"]) == {first.record["decision_id"], second.record["decision_id"]}
    # Both seeds commanded, neither applied yet: the layer has no free seed, so GERMINATE is illegal there.
    item, third = decide_epoch(5, ["DORMANT", "DORMANT"], second.gate)
    assert sick_layer_seed(item) is None
    sick = item.graph.layer_names.index("layers.1")
    assert not item.legal[1 + sick * 3: 1 + (sick + 1) * 3].any()
    assert third.command is None or third.command["layer_name"] != "layers.1"


def test_an_entry_ends_when_telemetry_shows_the_seed_taken() -> None:
    _, first = decide_epoch(3, ["DORMANT", "DORMANT"], None)
    item, _ = decide_epoch(4, ["GERMINATED", "DORMANT"], first.gate)
    assert item.gate["commanded"] == {}
    assert sick_layer_seed(item) == 1  # from telemetry alone
    # Unknown seed states (no telemetry for the layer) keep the entry.
    kept = unapplied_commands({"d": ["layers.1", 0], "e": ["layers.9", 1]}, window(4, ["DORMANT"])["layers"])
    assert kept == {"d": ["layers.1", 0], "e": ["layers.9", 1]}
    assert unapplied_commands({"d": ["layers.1", 0]}, window(4, ["CULLED", "DORMANT"])["layers"]) == {}


def test_a_rejected_or_v1_duplicate_command_frees_its_seed_and_nothing_else_does() -> None:
    _, first = decide_epoch(3, ["DORMANT", "DORMANT"], None)
    did = first.record["decision_id"]
    rejected = dict(SAMPLES["CommandOutcome"], decision_id=did, run_id="run-1", status="REJECTED", action=None,
                    layer_name=None, seed_index=None, kernel=None)  # as hosts before v2 send them
    freed = follow_host(first.gate, rejected)
    assert freed is not None and freed["commanded"] == {} and first.gate["commanded"]  # a copy
    assert freed["last_adapted"] == first.gate["last_adapted"]
    assert follow_host(first.gate, dict(rejected, status="APPLIED")) is None
    # A host before v2 does not say what it handled: a DUPLICATE took no seed.
    assert follow_host(first.gate, dict(rejected, status="DUPLICATE"))["commanded"] == {}
    assert follow_host(first.gate, dict(rejected, run_id="run-2")) is None
    assert follow_host(first.gate, dict(rejected, decision_id="other")) is None
    assert follow_host(None, rejected) is None
    assert follow_host(None, dict(rejected, status="APPLIED")) is None  # v1: nothing named
    item, _ = decide_epoch(4, ["DORMANT", "DORMANT"], freed)
    assert sick_layer_seed(item) == 0


def handled(outcome: dict, layer: str, seed: int | None, status: str) -> dict:
    return dict(outcome, status=status, action="GERMINATE", layer_name=layer, seed_index=seed, kernel="mlp_small")


def test_the_gate_follows_the_command_the_host_handled() -> None:
    """After a crash a worker can re-decide an epoch unlike the command the host applied (or WAIT):
    a v2 CommandOutcome naming the handled command puts that layer under cooldown and its seed in
    ``commanded``; when the gate already knows it, nothing changes."""
    _, first = decide_epoch(3, ["DORMANT", "DORMANT"], None)
    did = first.record["decision_id"]
    assert first.gate["commanded"] == {did: ["layers.1", 0]} and first.gate["last_adapted"] == {"layers.1": 3}
    base = dict(SAMPLES["CommandOutcome"], decision_id=did, run_id="run-1", epoch=3)
    # Normal operation: APPLIED or an identical resend's DUPLICATE change nothing.
    assert follow_host(first.gate, handled(base, "layers.1", 0, "APPLIED")) is None
    assert follow_host(first.gate, handled(base, "layers.1", 0, "DUPLICATE")) is None
    # The re-decision named layers.1 but the host had applied layers.0 (seed 1) under that id.
    fixed = follow_host(first.gate, handled(base, "layers.0", 1, "DUPLICATE"))
    assert fixed["last_adapted"] == {"layers.1": 3, "layers.0": 3}
    assert fixed["commanded"] == {did: ["layers.0", 1]}
    assert follow_host(fixed, handled(base, "layers.0", 1, "APPLIED")) is None  # then its APPLIED: known
    # The re-decision was WAIT (no entry, no cooldown): the first command's APPLIED tells.
    waited = dict(first.gate, last_adapted={}, commanded={})
    told = follow_host(waited, handled(base, "layers.0", 1, "APPLIED"))
    assert told["last_adapted"] == {"layers.0": 3} and told["commanded"] == {did: ["layers.0", 1]}
    # No gate state yet (the crash came before the model's first was saved): one for the outcome's run.
    new = follow_host(None, handled(base, "layers.0", 1, "APPLIED"))
    assert (new["run_id"], new["last_decided_epoch"], new["last_adapted"]) == ("run-1", -1, {"layers.0": 3})
    assert follow_host(None, handled(base, "layers.0", 1, "REJECTED")) is None
    # A later adaptation of the layer is kept; a stale entry of the id is replaced by the handled seed.
    later = dict(first.gate, last_adapted={"layers.0": 5, "layers.1": 3})
    assert follow_host(later, handled(base, "layers.0", 1, "DUPLICATE"))["last_adapted"] == later["last_adapted"]
    assert follow_host(later, handled(base, "layers.0", 1, "DUPLICATE"))["commanded"] == {did: ["layers.0", 1]}
    assert follow_host(later, handled(base, "layers.0", None, "DUPLICATE"))["commanded"] == {}
    # A REJECTED command took nothing, whatever it names; another run's outcome is ignored.
    assert follow_host(first.gate, handled(base, "layers.0", 1, "REJECTED"))["last_adapted"] == {"layers.1": 3}
    assert follow_host(first.gate, handled(dict(base, run_id="run-0"), "layers.0", 1, "APPLIED")) is None
    # The next epoch with a cooldown of 2: layers.0 may not be adapted again after the correction only.
    strict = GateConfig(confidence_threshold=0.5, cooldown_epochs=2, max_adaptations_per_epoch=1, epsilon=0.0)
    outcome = dict(SAMPLES["EpochOutcome"], epoch=4, run_id="run-1")
    for gate, legal in ((first.gate, True), (fixed, False)):
        item = prepare(outcome, TOPOLOGY, [window(4, ["GERMINATED", "DORMANT"])], gate, strict)
        layer0 = 1 + item.graph.layer_names.index("layers.0") * 3
        assert item.legal[layer0:layer0 + 3].any() == legal


def test_a_gate_state_written_before_commanded_existed_still_decides() -> None:
    _, first = decide_epoch(3, ["DORMANT", "DORMANT"], None)
    old = {k: v for k, v in first.gate.items() if k != "commanded"}
    item, made = decide_epoch(4, ["DORMANT", "DORMANT"], old)
    assert sick_layer_seed(item) == 0 and item.gate["commanded"] == {}
    assert np.isclose(made.record["distribution"][made.record["action_index"]], made.record["propensity"])
    # the legal mask is logged, one byte per action; the training side reads it back as the mask
    assert made.record["legal_mask"] == item.legal.astype(np.uint8).tobytes() and item.legal[1:].any()
    from training.episodes import legal_masks
    assert legal_masks([made.record["distribution"]], [made.record["legal_mask"]])[0].tolist() == item.legal.tolist()


def test_after_a_runs_final_epoch_only_wait_is_legal() -> None:
    outcome = dict(SAMPLES["EpochOutcome"], epoch=3, run_id="run-1", final=True)
    item = prepare(outcome, TOPOLOGY, [window(3, ["DORMANT", "DORMANT"])], None, CFG)
    assert item is not None and item.legal[0] and not item.legal[1:].any()
    policy = ThresholdHeuristic()
    made, = decide([item], policy, policy.version, CFG)
    assert made.command is None and made.record["action"] == "WAIT" and made.record["propensity"] == 1.0
    assert made.record["legal_mask"] == bytes([1] + [0] * (len(item.legal) - 1))
    assert prepare(dict(outcome, final=False), TOPOLOGY, [window(3, ["DORMANT", "DORMANT"])], None,
                   CFG).legal[1:].any()
