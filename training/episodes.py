"""Rebuild per-model episodes from replayed experience and join each decision to its outcomes.

Reward of a decision made after epoch ``e`` (the README documents it):

    r = val_loss[e] - val_loss[min(e + horizon, last epoch of the run)] - parameter_cost * parameter_delta

``parameter_delta`` comes from the host's CommandOutcome (0 for WAIT or a rejected command).
When the outcome never arrives because the host died (no record of the run for ``dead_after_s``
before the end of the data), the decision gets ``default_reward`` and the episode ends there.
Decisions whose outcome simply has not happened yet (the run is still live) are left out.

A decision id can have DecisionRecords with different actions: a worker that crashed after
delivering a decision but before its gate state was saved decides that epoch again from windows
that moved on (see the README's Reliability section). Hosts handle only the first AdaptationCommand
of an id, so the record kept is the one that command came from (a WAIT record when no command was
sent): the logged action is the one the host saw (:func:`handled_record`). Which command that was,
a CommandOutcome v2 says; for hosts before v2, the id's first archived AdaptationCommand.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hosts.commands import ACTION_FIELDS
from schemas import DecodeError
from training.replay import ExperienceRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RewardConfig:
    horizon: int = 3
    parameter_cost: float = 1e-5
    default_reward: float = -0.05
    dead_after_s: float = 120.0


@dataclass
class GraphState:
    """What the policy saw: node features [N, F], edges [2, E], layer names, legal action mask."""

    layer_names: list[str]
    node_features: np.ndarray
    edge_index: np.ndarray
    legal: np.ndarray

    @classmethod
    def from_decision(cls, record: dict[str, Any], edges: np.ndarray | None = None,
                      legal: np.ndarray | None = None) -> "GraphState":
        """The state a DecisionRecord logged; ``edges`` and ``legal`` (see ``legal_masks``): the
        record's, when the caller has them already."""
        features = record["node_features"]
        layers = len(record["layer_names"])
        if not (type(features) is np.ndarray and features.dtype == np.float32 and features.ndim == 2
                and features.shape[0] == layers):  # replay's decoded records already are
            features = np.asarray(features, dtype=np.float32).reshape(layers, -1)
        if edges is None:
            edges = edge_array(record)
        if legal is None:
            legal = legal_masks([record["distribution"]], [record.get("legal_mask")])[0]
        return cls(list(record["layer_names"]), features, edges, legal)


def legal_masks(distributions: list[Any], logged: list[bytes | None] | None = None) -> list[np.ndarray]:
    """The legal action mask of each decision, in one numpy pass (a comparison per small array cost
    ~1 µs each): the mask a DecisionRecord v2 logged (``logged``: its ``legal_mask``, one byte per
    action), else the logged distribution's support. The support is the legal set only when the
    behaviour explored (epsilon > 0): a deterministic policy, or the confidence gate without
    exploration, leaves legal actions at probability 0, and a target policy scored on the support
    alone would be renormalised onto the actions the behaviour took. WAIT is always legal, even when
    a deterministic policy gave it probability 0: the policy code refuses masks without it. The masks
    are views of one array."""
    arrays = [d if type(d) is np.ndarray else np.asarray(d, np.float64) for d in distributions]
    if logged is not None and any(logged):
        # Records without a mask (v1) among them: their support, as the same one byte per action.
        logged = [mask or (a > 0.0).tobytes() for a, mask in zip(arrays, logged)]
        sizes = np.fromiter(map(len, logged), dtype=np.int64, count=len(logged))
        flat = np.frombuffer(b"".join(logged), dtype=np.uint8) != 0
    else:
        sizes = np.fromiter((a.size for a in arrays), dtype=np.int64, count=len(arrays))
        flat = np.concatenate(arrays, axis=None) > 0.0 if arrays else np.zeros(0, dtype=bool)
    ends = np.cumsum(sizes)
    starts = ends - sizes
    flat[starts[sizes > 0]] = True
    return [flat[a:b] for a, b in zip(starts.tolist(), ends.tolist())]


def edge_array(record: dict[str, Any]) -> np.ndarray:
    """A DecisionRecord's edges as int64 [2, E]."""
    return np.array((record["edge_source"], record["edge_target"]), dtype=np.int64).reshape(2, -1)


@dataclass
class Transition:
    state: GraphState
    action: int
    propensity: float
    reward: float
    next_state: GraphState | None
    done: bool
    behaviour: np.ndarray  # the full logged distribution
    decision_id: str
    model_id: str
    epoch: int
    policy_version: str
    imputed: bool = False  # True when the reward is the default (outcome never arrived)
    run_id: str = ""  # with model_id, the episode this decision belongs to


@dataclass
class Episode:
    model_id: str
    run_id: str
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)
    epochs: dict[int, dict[str, Any]] = field(default_factory=dict)
    command_outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)
    final_epoch: int | None = None
    last_seen_ms: int = 0
    # decision id -> the DecisionRecords of that id whose action differs from the first one's
    redecided: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # decision ids left out: no record of theirs is the command the host's CommandOutcome v2 names
    unmatched: list[str] = field(default_factory=list)


# The record types an episode is built from; replay can skip the rest (mostly health telemetry) undecoded.
# AdaptationCommands (archived in commands-topic order) tell which of differing re-decisions a host
# handled; they are decoded only when some decision id has such records (COMMANDS_UNDECODED).
EPISODE_TYPES = frozenset({"DecisionRecord", "EpochOutcome", "CommandOutcome", "AdaptationCommand"})
COMMANDS_UNDECODED = frozenset({"AdaptationCommand"})


def same_action(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two DecisionRecords (or a record and an AdaptationCommand) name the same action."""
    return all(a.get(name) == b.get(name) for name in ACTION_FIELDS)


def is_handled(record: dict[str, Any], command: dict[str, Any] | None) -> bool:
    """Whether a DecisionRecord is what hosts handled for its id: the action of ``command``, the id's
    first AdaptationCommand (hosts handle the first and answer DUPLICATE to the rest), or WAIT when
    no command was sent (or it was lost with its worker)."""
    return same_action(record, command) if command is not None else record.get("action") == "WAIT"


def handled_record(candidates: list[dict[str, Any]], command: dict[str, Any] | None) -> dict[str, Any]:
    """Of differing DecisionRecords of one decision id (in archive order), the first one a host acted
    on (``is_handled``); when none is, the first record."""
    return next((record for record in candidates if is_handled(record, command)), candidates[0])


def group_episodes(records: list[ExperienceRecord]) -> dict[tuple[str, str], Episode]:
    """Group by (model_id, run_id); duplicates from at-least-once delivery are dropped by id/epoch,
    and of differing records of one decision id the one a host handled is kept (``handled_record``)."""
    episodes: dict[tuple[str, str], Episode] = {}
    runs_of_decision: dict[str, tuple[str, str]] = {}
    pending_outcomes: list[ExperienceRecord] = []
    commands: list[ExperienceRecord] = []
    for rec in records:
        name, value = rec.name, rec.value
        if name == "AdaptationCommand":
            commands.append(rec)
            continue
        if name not in EPISODE_TYPES:
            continue
        key = (value["model_id"], value["run_id"])
        episode = episodes.get(key)
        if episode is None:
            episode = episodes[key] = Episode(*key)
        if rec.timestamp_ms > episode.last_seen_ms:
            episode.last_seen_ms = rec.timestamp_ms
        if name == "DecisionRecord":
            first = episode.decisions.setdefault(value["decision_id"], value)
            if first is not value and not same_action(first, value):
                episode.redecided.setdefault(value["decision_id"], []).append(value)
            runs_of_decision[value["decision_id"]] = key
        elif name == "EpochOutcome":
            episode.epochs.setdefault(value["epoch"], value)
            if value["final"]:
                episode.final_epoch = value["epoch"]
        else:
            pending_outcomes.append(rec)
    for rec in pending_outcomes:
        key = runs_of_decision.get(rec.value["decision_id"], (rec.value["model_id"], rec.value["run_id"]))
        if key in episodes:
            episodes[key].command_outcomes.setdefault(rec.value["decision_id"], rec.value)
    first_commands: dict[str, dict[str, Any]] | None = None
    for episode in episodes.values():
        for did, others in episode.redecided.items():
            command = named_command(episode.command_outcomes.get(did))
            if command is None:  # a host before v2: the first command archived
                first_commands = _first_commands(commands) if first_commands is None else first_commands
                command = first_commands.get(did)
            episode.decisions[did] = handled_record([episode.decisions[did], *others], command)
    for episode in episodes.values():
        _drop_unmatched(episode)
    return episodes


def _drop_unmatched(episode: Episode) -> None:
    """Leave out decisions whose record is not the command their host says it handled (v2): the
    handled record lies outside the replayed data (a re-decision after a crash whose twin is before
    the window's start), so the logged action, state and propensity are not what the host saw."""
    for did, outcome in episode.command_outcomes.items():
        named = named_command(outcome)
        record = episode.decisions.get(did) if named is not None else None
        if record is not None and not same_action(record, named):
            del episode.decisions[did]
            episode.unmatched.append(did)
            log.warning("decision %s of %s left out: its host handled %s %s/%s, the replayed record says %s %s/%s",
                        did, episode.model_id, named["action"], named["layer_name"], named["seed_index"],
                        record["action"], record["layer_name"], record["seed_index"])


def named_command(outcome: dict[str, Any] | None) -> dict[str, Any] | None:
    """The command a CommandOutcome v2 says its host handled under the id (its action fields);
    None for an outcome of a host before v2, or none."""
    return outcome if outcome is not None and outcome.get("action") is not None else None


def _first_commands(commands: list[ExperienceRecord]) -> dict[str, dict[str, Any]]:
    """Each decision id's first AdaptationCommand (decoding those replay left undecoded)."""
    first: dict[str, dict[str, Any]] = {}
    for rec in commands:
        try:
            value = rec.decoded()
        except DecodeError as exc:
            log.warning("undecodable AdaptationCommand at %d/%d: %s", rec.partition, rec.offset, exc)
            continue
        first.setdefault(value["decision_id"], value)
    return first


def redecided_ids(episodes: dict[tuple[str, str], Episode]) -> int:
    """How many decision ids had records with different actions (resolved by ``handled_record``)."""
    return sum(len(episode.redecided) for episode in episodes.values())


def unmatched_ids(episodes: dict[tuple[str, str], Episode]) -> int:
    """How many decisions were left out because no replayed record of theirs is what the host handled."""
    return sum(len(episode.unmatched) for episode in episodes.values())


def transitions(episodes: dict[tuple[str, str], Episode], cfg: RewardConfig, data_end_ms: int) -> list[Transition]:
    """Every decision with a known (or imputed) reward, in episode order."""
    kept: list[tuple[Episode, dict, float, bool, bool]] = []
    for episode in episodes.values():
        kept.extend(_rewarded(episode, cfg, data_end_ms))
    states = _states([decision for _, decision, _, _, _ in kept])  # each is also the previous next_state
    out = []
    for i, (episode, decision, reward, imputed, ends) in enumerate(kept):
        nxt = states[i + 1] if i + 1 < len(kept) and kept[i + 1][0] is episode else None
        out.append(Transition(
            state=states[i], action=decision["action_index"], propensity=decision["propensity"], reward=reward,
            next_state=nxt,
            done=nxt is None and ends,
            behaviour=np.asarray(decision["distribution"], dtype=np.float64),
            decision_id=decision["decision_id"], model_id=episode.model_id, epoch=decision["epoch"],
            policy_version=decision["policy_version"], imputed=imputed, run_id=episode.run_id,
        ))
    return out


def _rewarded(episode: Episode, cfg: RewardConfig, data_end_ms: int) -> list[tuple[Episode, dict, float, bool, bool]]:
    """(episode, decision, reward, imputed, episode ends) for each of its decisions with a reward, in order."""
    decisions = sorted(episode.decisions.values(), key=lambda d: (d["epoch"], d["timestamp_ms"]))
    dead = episode.final_epoch is None and data_end_ms - episode.last_seen_ms > cfg.dead_after_s * 1000
    ends = episode.final_epoch is not None or dead
    last_epoch = episode.final_epoch if episode.final_epoch is not None else max(episode.epochs, default=-1)
    kept: list[tuple[Episode, dict, float, bool, bool]] = []
    for decision in decisions:
        epoch = decision["epoch"]
        target = min(epoch + cfg.horizon, last_epoch) if episode.final_epoch is not None else epoch + cfg.horizon
        before, after = episode.epochs.get(epoch), episode.epochs.get(target)
        if before is not None and after is not None and target > epoch:
            outcome = episode.command_outcomes.get(decision["decision_id"])
            delta = outcome["parameter_delta"] if outcome and outcome["status"] == "APPLIED" else 0
            reward = before["val_loss"] - after["val_loss"] - cfg.parameter_cost * delta
            kept.append((episode, decision, reward, False, ends))
        elif episode.final_epoch is not None and epoch >= episode.final_epoch:
            kept.append((episode, decision, 0.0, False, ends))  # decided on the last epoch: nothing follows
        elif dead:
            kept.append((episode, decision, cfg.default_reward, True, ends))
        # else: the outcome is still in the future; leave the decision out
    return kept


def _states(decisions: list[dict[str, Any]]) -> list[GraphState]:
    """The decisions' states. A run's topology is the same at each of its decisions, so equal edge
    lists share one read-only array (converting them was the largest cost of building a state)."""
    states = []
    last: tuple[list, list] | None = None
    edges = np.zeros((2, 0), dtype=np.int64)
    masks = legal_masks([decision["distribution"] for decision in decisions],
                        [decision.get("legal_mask") for decision in decisions])
    for decision, legal in zip(decisions, masks):
        lists = (decision["edge_source"], decision["edge_target"])
        if lists != last:
            last, edges = lists, edge_array(decision)
            edges.flags.writeable = False
        states.append(GraphState.from_decision(decision, edges, legal))
    return states
