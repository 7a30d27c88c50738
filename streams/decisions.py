"""From epoch outcomes and table state to gated, sampled decisions (one batched policy call)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.actions import decode as decode_action
from models.actions import legal_mask
from models.decide import GateConfig, blocked_layers, gate_distribution, sample
from models.graph import DORMANT, FEATURE_NAMES, ModelGraph, build_graph, merge_layer_aggregates
from models.kernels import KERNELS
from models.policy import collate

DECISION_NAMESPACE = uuid.UUID("6f1c7e0e-6d1b-4d8e-9a53-7a6d2f0b8c11")


def decision_id(model_id: str, run_id: str, epoch: int) -> str:
    """Deterministic, so a re-processed epoch yields the same id (hosts apply each id once).

    One id per model, run and epoch whatever the trigger: if the EpochOutcome and the window-close
    trigger both decide an epoch (a crash between delivery and the gate write, a rebalance), hosts
    apply the first command and drop the second as a duplicate. The name keeps the ``epoch_end``
    suffix of the first release, so epoch-end ids did not change.
    """
    return str(uuid.uuid5(DECISION_NAMESPACE, f"{model_id}/{run_id}/{epoch}/epoch_end"))


@dataclass
class DueModel:
    """A model whose epoch ended, with everything the policy needs about it (``trigger``: ``epoch_end``
    for an EpochOutcome, ``window_close`` for a closed telemetry window)."""

    outcome: dict[str, Any]
    graph: ModelGraph
    legal: np.ndarray
    gate: dict[str, Any]
    trigger: str = "epoch_end"


@dataclass
class Made:
    """One decision: the DecisionRecord, the command to send (None for WAIT), the new gate state."""

    record: dict[str, Any]
    command: dict[str, Any] | None
    gate: dict[str, Any]


def gate_config(settings: Any) -> GateConfig:
    return GateConfig(
        confidence_threshold=settings.confidence_threshold,
        cooldown_epochs=settings.cooldown_epochs,
        max_adaptations_per_epoch=settings.max_adaptations_per_epoch,
        epsilon=settings.exploration_epsilon,
    )


def fresh_gate(gate: dict[str, Any] | None, run_id: str) -> dict[str, Any]:
    """The gate state for ``run_id``: a new run forgets cooldowns of the old one.

    ``commanded`` maps the decision id of each GERMINATE command to its ``[layer, seed]`` until
    telemetry shows that seed no longer DORMANT or the host does not apply the command (gate states
    written before it existed have none).
    """
    if not gate or gate.get("run_id") != run_id:
        return {"run_id": run_id, "last_decided_epoch": -1, "last_adapted": {},
                "adapt_epoch": -1, "adaptations": 0, "commanded": {}}
    return dict(gate)


def unapplied_commands(commanded: dict[str, list], aggregates: dict[str, dict]) -> dict[str, list]:
    """The entries of ``commanded`` whose seed the window still shows DORMANT (or does not show).

    A host applies a command when it arrives, which under load is epochs after the decision; until
    its telemetry shows the seed germinated, a later decision must not pick the same seed again
    (the host would reject it: measured, ~20 % of the demo fleet's commands before this).
    """
    out = {}
    for decision, (layer, seed) in commanded.items():
        states = (aggregates.get(layer) or {}).get("seed_states") or []
        if seed >= len(states) or states[seed] == DORMANT:
            out[decision] = [layer, seed]
    return out


def follow_host(gate: dict[str, Any] | None, outcome: dict[str, Any]) -> dict[str, Any] | None:
    """The gate corrected by what a CommandOutcome says the host did; None when nothing changes.

    * REJECTED: the command took no seed; its ``commanded`` entry goes.
    * APPLIED or DUPLICATE naming (CommandOutcome v2) the GERMINATE the host handled under that id,
      which a worker that crashed between delivering a decision and saving its gate may not know:
      it decided the epoch again, perhaps differently (the host answered that command DUPLICATE),
      perhaps WAIT. When the gate has no adaptation of the handled layer at or after the outcome's
      epoch, that layer's cooldown starts at that epoch; the handled seed replaces the id's
      ``commanded`` entry (until telemetry shows it taken). A differing re-decision's cooldown stays
      (it only makes the gate stricter). In normal operation the gate already knows, and an
      APPLIED outcome changes nothing. A model without a gate state yet (the crash came before its
      first one was saved) gets one for the outcome's run.
    * DUPLICATE from a host before v2 (no action named): the entry goes, as the command answered
      took no seed (a resend's seed was taken by its first copy, which telemetry shows soon anyway).
    """
    status = outcome.get("status")
    layer, seed = outcome.get("layer_name"), outcome.get("seed_index")
    handled = status in ("APPLIED", "DUPLICATE") and outcome.get("action") == "GERMINATE" and layer is not None
    if not gate and handled:
        gate = fresh_gate(None, outcome["run_id"])
    if not gate or gate.get("run_id") != outcome.get("run_id") or status not in ("APPLIED", "REJECTED", "DUPLICATE"):
        return None
    did = outcome.get("decision_id")
    commanded = dict(gate.get("commanded") or {})
    if not handled:
        if status == "APPLIED" or did not in commanded:
            return None
        del commanded[did]
        return dict(gate, commanded=commanded)
    last_adapted = dict(gate.get("last_adapted") or {})
    epoch = int(outcome["epoch"])
    entry = [layer, seed] if seed is not None else None
    known = last_adapted.get(layer, -1) >= epoch
    if known and (did not in commanded or commanded[did] == entry):
        return None
    if not known:
        last_adapted[layer] = epoch
    if entry is not None and (not known or did in commanded):
        commanded[did] = entry
    else:
        commanded.pop(did, None)
    return dict(gate, last_adapted=last_adapted, commanded=commanded)


def last_decided_epoch(gate: dict[str, Any] | None, run_id: str) -> int:
    """The newest epoch of ``run_id`` already decided (-1: none)."""
    return gate["last_decided_epoch"] if gate and gate.get("run_id") == run_id else -1


def prepare(outcome: dict[str, Any], topology: dict[str, Any], windows: list[dict[str, Any]],
            gate: dict[str, Any] | None, cfg: GateConfig, trigger: str = "epoch_end") -> DueModel | None:
    """Build the graph and legal-action mask; None when this epoch was already decided (by either
    trigger: at most one decision per model and epoch, whichever trigger comes first).

    After a run's final epoch only WAIT is legal: the host has stopped training, so a command
    could never be applied (the decision is still made and logged; training gives it reward 0).
    """
    epoch = outcome["epoch"]
    if last_decided_epoch(gate, outcome["run_id"]) >= epoch:
        return None
    state = fresh_gate(gate, outcome["run_id"])
    aggregates: dict[str, dict] = {}
    for window in windows:
        if not window or window.get("run_id") != outcome["run_id"]:
            continue
        for name, agg in window.get("layers", {}).items():
            aggregates[name] = merge_layer_aggregates(aggregates[name], agg) if name in aggregates else agg
    commanded = unapplied_commands(state.get("commanded") or {}, aggregates)
    state["commanded"] = commanded
    taken: dict[str, set[int]] = {}
    for layer, seed in commanded.values():
        taken.setdefault(layer, set()).add(seed)
    graph = build_graph(topology, aggregates, state["last_adapted"], epoch, taken)
    blocked = blocked_layers(state["last_adapted"], epoch, cfg.cooldown_epochs)
    capped = state["adapt_epoch"] == epoch and state["adaptations"] >= cfg.max_adaptations_per_epoch
    if capped or outcome.get("final"):
        blocked = set(graph.layer_names)
    legal = legal_mask(graph, len(KERNELS), blocked)
    return DueModel(outcome, graph, legal, state, trigger)


def decide(due: list[DueModel], policy: Any, version: str, cfg: GateConfig) -> list[Made]:
    """Run the policy once over all due graphs, gate each distribution and sample one action."""
    if not due:
        return []
    batch = collate([d.graph for d in due])
    probs, values = policy.distributions(batch, [d.legal for d in due])
    now_ms = int(time.time() * 1000)
    made = []
    for item, p, value in zip(due, probs, values):
        made.append(_one(item, np.asarray(p, dtype=np.float64), float(value), version, cfg, now_ms))
    return made


def _one(item: DueModel, probs: np.ndarray, value: float, version: str, cfg: GateConfig, now_ms: int) -> Made:
    outcome, graph = item.outcome, item.graph
    did = decision_id(outcome["model_id"], outcome["run_id"], outcome["epoch"])
    final, gate_name = gate_distribution(probs, item.legal, cfg)
    # Seeded by the decision id: re-processing the same epoch with the same policy repeats the choice.
    rng = np.random.default_rng(uuid.UUID(did).int % (2**63))
    index, propensity = sample(final, rng)
    action = decode_action(index, len(KERNELS))
    layer = seed = kernel = None
    if action is not None:
        layer_index, kernel_index = action
        layer = graph.layer_names[layer_index]
        seed = graph.dormant_seed[layer_index]
        kernel = KERNELS[kernel_index]
    record = {
        "decision_id": did,
        "model_id": outcome["model_id"],
        "run_id": outcome["run_id"],
        "epoch": outcome["epoch"],
        "timestamp_ms": now_ms,
        "trigger": item.trigger,
        "policy_version": version,
        "action": "WAIT" if action is None else "GERMINATE",
        "layer_name": layer,
        "seed_index": seed,
        "kernel": kernel,
        "action_index": int(index),
        "propensity": float(propensity),
        "distribution": [float(x) for x in final],
        "kernels": list(KERNELS),
        "value_estimate": value,
        "gate": gate_name,
        "feature_names": list(FEATURE_NAMES),
        "layer_names": list(graph.layer_names),
        "node_features": graph.node_features.tolist(),
        "edge_source": graph.edge_index[0].tolist(),
        "edge_target": graph.edge_index[1].tolist(),
        "legal_mask": np.asarray(item.legal, dtype=bool).tobytes(),  # what off-policy evaluation needs
    }
    gate = dict(item.gate, last_decided_epoch=outcome["epoch"])
    command = None
    if action is not None:
        command = {
            "decision_id": did, "model_id": outcome["model_id"], "epoch": outcome["epoch"],
            "timestamp_ms": now_ms, "action": "GERMINATE", "layer_name": layer, "seed_index": seed,
            "kernel": kernel, "policy_version": version, "probability": float(propensity),
        }
        last_adapted = dict(gate["last_adapted"], **{layer: outcome["epoch"]})
        same_epoch = gate["adapt_epoch"] == outcome["epoch"]
        gate.update(last_adapted=last_adapted, adapt_epoch=outcome["epoch"],
                    adaptations=(gate["adaptations"] + 1) if same_epoch else 1,
                    commanded={**(gate.get("commanded") or {}), did: [layer, seed]})
    return Made(record, command, gate)
