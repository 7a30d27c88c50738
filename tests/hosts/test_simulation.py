"""SimulatedModel: dynamics in which good adaptations help and bad ones hurt, and its contract."""

from __future__ import annotations

import itertools
import time
from typing import Callable

import numpy as np
import pytest

from hosts.simulation import SimulatedModel
from models.kernels import KERNELS
from schemas import decode_as, encode

_ids = itertools.count()


def model(seed: int, **kwargs) -> SimulatedModel:
    return SimulatedModel(f"sim-{seed}", np.random.default_rng(seed), **kwargs)


def command(m: SimulatedModel, layer: str, kernel: int | str = 0, epoch: int | None = None, **overrides) -> dict:
    return {
        "decision_id": f"d-{next(_ids)}", "model_id": m.model_id,
        "epoch": m.epoch - 1 if epoch is None else epoch, "timestamp_ms": int(time.time() * 1000),
        "action": "GERMINATE", "layer_name": layer, "seed_index": None,
        "kernel": KERNELS[kernel] if isinstance(kernel, int) else kernel,
        "policy_version": "test", "probability": 1.0,
    } | overrides


def play_epoch(m: SimulatedModel) -> tuple[dict, dict[str, dict]]:
    """One epoch: its signals (averaged per layer) and its outcome."""
    per_layer: dict[str, list[dict]] = {}
    for _ in range(m.signals_per_epoch):
        for s in m.health_signals():
            per_layer.setdefault(s["layer_name"], []).append(s)
    keys = ("health_score", "dead_neuron_ratio", "avg_correlation", "gradient_norm")
    mean = {name: {k: float(np.mean([s[k] for s in sigs])) for k in keys} for name, sigs in per_layer.items()}
    return m.end_epoch(), mean


Policy = Callable[[SimulatedModel, dict[str, dict], np.random.Generator], tuple[str, int] | None]


def final_loss(policy: Policy, seeds: range) -> float:
    finals = []
    for seed in seeds:
        m, rng = model(seed), np.random.default_rng(1000 + seed)
        while True:
            outcome, signals = play_epoch(m)
            if outcome["final"]:
                break
            choice = policy(m, signals, rng)
            if choice is not None:
                m.apply(command(m, *choice))
        finals.append(outcome["val_loss"])
    return float(np.mean(finals))


def smart(m: SimulatedModel, signals: dict[str, dict], rng: np.random.Generator) -> tuple[str, int] | None:
    """Reads the deficit type from the telemetry, treats the sickest layer, waits otherwise."""
    candidates = []
    for name, s in signals.items():
        signs = (s["dead_neuron_ratio"] > 0.3, s["avg_correlation"] > 0.6, s["gradient_norm"] < 2e-3)
        kind = signs.index(True) if any(signs) else None
        if kind is not None:
            candidates.append((s["health_score"], name, kind))
    return min(candidates)[1:] if candidates else None


def heuristic(m: SimulatedModel, signals: dict[str, dict], rng: np.random.Generator) -> tuple[str, int] | None:
    name, s = min(signals.items(), key=lambda kv: kv[1]["health_score"])
    return (name, 0) if s["health_score"] < 0.3 else None


def never(m: SimulatedModel, signals: dict[str, dict], rng: np.random.Generator) -> None:
    return None


def random_layer(m: SimulatedModel, signals: dict[str, dict], rng: np.random.Generator) -> tuple[str, int] | None:
    names = list(signals)
    return (names[int(rng.integers(len(names)))], int(rng.integers(len(KERNELS)))) if rng.random() < 0.5 else None


def test_policy_ordering_smart_heuristic_never_random() -> None:
    seeds = range(60)
    losses = {p.__name__: final_loss(p, seeds) for p in (smart, heuristic, never, random_layer)}
    assert losses["smart"] < losses["heuristic"] - 0.1, losses
    assert losses["heuristic"] < losses["never"] - 0.2, losses
    assert losses["never"] < losses["random_layer"] - 0.1, losses


def _paired(seed: int, choose: Callable[[SimulatedModel], tuple[str, int] | None]) -> float | None:
    """Final val loss with one adaptation after epoch 1 minus without it (same noise)."""
    treated, control = model(seed), model(seed)
    for m in (treated, control):
        play_epoch(m)
        play_epoch(m)
    choice = choose(treated)
    if choice is None:
        return None
    assert treated.apply(command(treated, *choice))["status"] == "APPLIED"
    while True:
        a, _ = play_epoch(treated)
        b, _ = play_epoch(control)
        if a["final"]:
            return a["val_loss"] - b["val_loss"]


def _deficit_layer(m: SimulatedModel, matching: bool) -> tuple[str, int] | None:
    for name, kind in m.deficits.items():
        if kind is not None:
            return name, kind if matching else (kind + 1) % len(KERNELS)
    return None


def test_matching_kernel_on_a_deficit_layer_helps_a_wrong_one_helps_less() -> None:
    matching = [d for s in range(30) if (d := _paired(s, lambda m: _deficit_layer(m, True))) is not None]
    wrong = [d for s in range(30) if (d := _paired(s, lambda m: _deficit_layer(m, False))) is not None]
    assert len(matching) >= 20
    assert np.mean(matching) < -0.15  # deficit_cost 0.2, nearly converged at the end of the run
    assert np.mean(matching) < np.mean(wrong) < -0.05


def test_adapting_a_healthy_layer_hurts() -> None:
    def healthy(m: SimulatedModel) -> tuple[str, int] | None:
        return next(((n, 0) for n, kind in m.deficits.items() if kind is None), None)

    deltas = [d for s in range(30) if (d := _paired(s, healthy)) is not None]
    assert np.mean(deltas) > 0.05


def test_apply_is_idempotent_by_decision_id() -> None:
    m = model(1)
    play_epoch(m)
    cmd = command(m, "layers.0", 1)
    first = m.apply(cmd)
    state = (m.severities, [s.state for s in m.layers[0].seeds], m.parameter_count(), m.floor())
    again = m.apply(cmd)
    assert first["status"] == "APPLIED" and first["parameter_delta"] > 0
    assert again["status"] == "DUPLICATE" and again["parameter_delta"] == 0
    assert state == (m.severities, [s.state for s in m.layers[0].seeds], m.parameter_count(), m.floor())
    for outcome in (first, again):
        assert decode_as("CommandOutcome", encode("CommandOutcome", outcome)) == outcome


def test_rejections_have_reasons() -> None:
    m = model(2, num_layers=8)
    play_epoch(m)
    for _ in range(4):
        assert m.apply(command(m, "layers.1"))["status"] == "APPLIED"
    cases = {
        "no dormant seed": command(m, "layers.1"),
        "unknown layer": command(m, "layers.99"),
        "unknown kernel": command(m, "layers.2", "conv"),
        "has not ended": command(m, "layers.2", epoch=5),
        "not DORMANT": command(m, "layers.1", seed_index=0),
        "out of range": command(m, "layers.2", seed_index=9),
        "not a command": command(m, "layers.2", action="WAIT"),
    }
    for reason, cmd in cases.items():
        outcome = m.apply(cmd)
        assert outcome["status"] == "REJECTED" and reason in outcome["reason"], (reason, outcome)


def test_cull_undoes_an_adaptation() -> None:
    m = model(3)
    play_epoch(m)
    floor, params = m.floor(), m.parameter_count()
    healthy = next(n for n, kind in m.deficits.items() if kind is None)
    added = m.apply(command(m, healthy, 2))["parameter_delta"]
    assert m.floor() > floor
    culled = m.apply(command(m, healthy, action="CULL", kernel=None))
    assert culled["status"] == "APPLIED" and culled["parameter_delta"] == -added
    assert m.floor() == pytest.approx(floor) and m.parameter_count() == params


def test_runs_end_final_and_restart_with_a_new_run_id() -> None:
    m = model(4, epochs_per_run=3)
    first = m.topology()
    outcomes = [play_epoch(m)[0] for _ in range(3)]
    assert [o["epoch"] for o in outcomes] == [0, 1, 2]
    assert [o["final"] for o in outcomes] == [False, False, True]
    assert m.run_over
    second = m.topology()
    assert second["run_id"] != first["run_id"] and not m.run_over
    nxt = play_epoch(m)[0]
    assert nxt["epoch"] == 0 and nxt["run_id"] == second["run_id"] and nxt["val_loss"] > outcomes[-1]["val_loss"]
    for record, name in ((second, "ModelTopology"), (nxt, "EpochOutcome")):
        assert decode_as(name, encode(name, record)) == record


def test_an_outcome_names_its_epochs_last_report_step() -> None:
    m = model(5)
    reports = [m.health_signals() for _ in range(3)]
    outcome = m.end_epoch()
    assert outcome["last_report_step"] == reports[-1][0]["step"] == m.step > reports[0][0]["step"]
    assert m.end_epoch()["last_report_step"] is None  # an epoch without reports names none


def test_command_from_an_earlier_run_is_rejected() -> None:
    m = model(5, epochs_per_run=2)
    play_epoch(m)
    stale = command(m, "layers.0", epoch=1, timestamp_ms=int(time.time() * 1000) - 60_000)
    play_epoch(m)
    m.topology()  # new run
    assert "earlier run" in m.apply(stale)["reason"]


def test_signals_reflect_deficits() -> None:
    healthy, kinds = [], {0: [], 1: [], 2: []}
    for seed in range(20):
        m = model(seed)
        truth = m.deficits
        for _ in range(3):
            signals = m.health_signals()
            assert len(signals) == len(truth)
            for s in signals:
                kind = truth[s["layer_name"]]
                (healthy if kind is None else kinds[kind]).append(s)
    mean = lambda rows, k: float(np.mean([r[k] for r in rows]))  # noqa: E731
    assert mean(healthy, "health_score") > 0.8
    for rows in kinds.values():
        assert mean(rows, "health_score") < 0.3
    assert mean(kinds[0], "dead_neuron_ratio") > 0.5 > mean(healthy, "dead_neuron_ratio")
    assert mean(kinds[1], "avg_correlation") > 0.7 > mean(healthy, "avg_correlation")
    assert mean(kinds[2], "gradient_norm") < 1e-3 < mean(healthy, "gradient_norm")
    s = healthy[0]
    assert decode_as("HealthSignal", encode("HealthSignal", s)) == s


def test_seeded_and_reproducible() -> None:
    a, b = model(7), model(7)
    assert a.deficits == b.deficits
    for _ in range(5):
        oa, sa = play_epoch(a)
        ob, sb = play_epoch(b)
        assert sa == sb and oa["val_loss"] == ob["val_loss"]
