"""CommandLedger and the shared command checks."""

from __future__ import annotations

import pytest

from hosts.commands import CommandLedger, Rejected, apply_once, check_command


def test_each_decision_id_passes_once() -> None:
    ledger = CommandLedger(capacity=8)
    ledger.new_run("r1")
    assert ledger.first_time("d1")
    assert not ledger.first_time("d1")
    assert "d1" in ledger and "d2" not in ledger


def test_current_run_is_remembered_in_full_and_old_runs_are_bounded() -> None:
    ledger = CommandLedger(capacity=3)
    ledger.new_run("r1")
    ids = [f"d{i}" for i in range(10)]
    assert all(ledger.first_time(i) for i in ids)
    assert all(i in ledger for i in ids)  # the whole current run, beyond capacity
    ledger.new_run("r2")
    assert [i in ledger for i in ids] == [False] * 7 + [True] * 3  # only the last 3 survive the run change
    assert len(ledger) == 3
    assert not ledger.first_time("d9")


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        CommandLedger(capacity=0)


def command(**overrides) -> dict:
    base = {"decision_id": "d", "model_id": "m", "epoch": 2, "timestamp_ms": 2_000, "action": "GERMINATE",
            "layer_name": "layers.0", "seed_index": None, "kernel": "mlp_small", "policy_version": "p",
            "probability": 1.0}
    return base | overrides


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"model_id": "other"}, "reached"),
        ({"action": "WAIT"}, "not a command"),
        ({"timestamp_ms": 999}, "earlier run"),
        ({"epoch": 3}, "has not ended"),
        ({"epoch": -1}, "has not ended"),
    ],
)
def test_check_command_rejects_commands_of_other_runs(overrides: dict, reason: str) -> None:
    with pytest.raises(Rejected, match=reason):
        check_command(command(**overrides), "m", "run-1", run_start_ms=1_000, epoch=3)


def test_check_command_accepts_a_command_about_an_ended_epoch() -> None:
    check_command(command(), "m", "run-1", run_start_ms=1_000, epoch=3)


def test_apply_once_applies_rejects_and_drops_duplicates() -> None:
    ledger = CommandLedger()
    calls: list[str] = []

    def execute(command: dict) -> int:
        calls.append(command["decision_id"])
        if command["layer_name"] == "nowhere":
            raise Rejected("unknown layer 'nowhere'")
        return 42

    base = {"action": "GERMINATE", "epoch": 3, "layer_name": "layers.0"}
    first = apply_once(ledger, dict(base, decision_id="d-1"), execute, "m-1", "run-1", 4, 1_000)
    again = apply_once(ledger, dict(base, decision_id="d-1"), execute, "m-1", "run-1", 4, 2_000)
    bad = apply_once(ledger, dict(base, decision_id="d-2", layer_name="nowhere"), execute, "m-1", "run-1", 4, 3_000)
    assert (first["status"], first["parameter_delta"], first["epoch"], first["timestamp_ms"]) == ("APPLIED", 42, 3, 1_000)
    assert (again["status"], again["parameter_delta"], again["reason"]) == ("DUPLICATE", 0, "decision already handled")
    assert (bad["status"], bad["parameter_delta"], bad["reason"]) == ("REJECTED", 0, "unknown layer 'nowhere'")
    assert calls == ["d-1", "d-2"]  # the duplicate never reached the model
    assert {first["model_id"], first["run_id"]} == {"m-1", "run-1"}


def test_outcomes_name_the_command_handled_under_their_id() -> None:
    """A DUPLICATE names the first command of its id, not the one it answers (a differing
    re-decision after a worker crash); APPLIED and REJECTED name their own (CommandOutcome v2)."""
    ledger = CommandLedger(capacity=1)
    ledger.new_run("run-1")

    def execute(command: dict) -> int:
        if command["layer_name"] == "nowhere":
            raise Rejected("unknown layer 'nowhere'")
        return 7

    first = apply_once(ledger, command(decision_id="d-1", seed_index=0), execute, "m", "run-1", 3, 1)
    redecided = apply_once(ledger, command(decision_id="d-1", layer_name="layers.1", seed_index=1, kernel="lowrank"),
                           execute, "m", "run-1", 3, 2)
    bad = apply_once(ledger, command(decision_id="d-2", layer_name="nowhere"), execute, "m", "run-1", 3, 3)
    wanted = {"action": "GERMINATE", "layer_name": "layers.0", "seed_index": 0, "kernel": "mlp_small"}
    assert first["status"] == "APPLIED" and {k: first[k] for k in wanted} == wanted
    assert redecided["status"] == "DUPLICATE" and {k: redecided[k] for k in wanted} == wanted
    assert bad["status"] == "REJECTED" and bad["layer_name"] == "nowhere"
    # Beyond the ledger's capacity the current run still remembers the first command of d-1.
    assert ledger.handled("d-1") == wanted
    ledger.new_run("run-2")
    assert ledger.handled("d-1") is None and ledger.handled("d-2")["layer_name"] == "nowhere"
    # An id recorded without its command answers with no action (a v1-style outcome).
    ledger.first_time("d-3")
    late = apply_once(ledger, command(decision_id="d-3"), execute, "m", "run-2", 3, 4)
    assert late["status"] == "DUPLICATE" and late["layer_name"] is None and late["action"] is None


def test_a_v2_command_outcome_encodes_and_a_v1_one_still_decodes() -> None:
    import io

    import fastavro

    from schemas import decode, encode
    from schemas.codec import registry

    ledger = CommandLedger()
    outcome = apply_once(ledger, command(seed_index=2), lambda c: 5, "m", "run-1", 3, 1)
    assert decode(encode("CommandOutcome", outcome)).value == outcome
    v1 = registry().releases["CommandOutcome"][0]  # what hosts before v2 write
    assert v1 is not registry().current["CommandOutcome"]
    body = io.BytesIO()
    fastavro.schemaless_writer(body, v1.fast, {k: v for k, v in outcome.items() if k in
                                               {f["name"] for f in v1.parsed["fields"]}})
    old = decode(v1.header + body.getvalue()).value
    assert old["status"] == "APPLIED" and old["parameter_delta"] == 5
    assert (old["action"], old["layer_name"], old["seed_index"], old["kernel"]) == (None, None, None, None)
