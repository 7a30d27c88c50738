"""Logged transitions as something a learner can batch fast, split by episode.

A :class:`TransitionDataset` keeps, per logged decision, a :class:`ModelGraph` built from the
archived GraphState (what :func:`models.policy.collate` consumes), the legal action mask, and flat
numpy arrays of actions, propensities, rewards and done flags plus the full behaviour
distribution. ``batch(rows)`` collates any subset into a :class:`Batch` for the policy's
``log_probs(batch.graphs, batch.masks)``.

Legal masks are what the DecisionRecord logged (v2), else the support of the logged distribution
plus WAIT (see ``training.episodes.legal_masks``). Off-policy evaluation can only score the
actions the behaviour took with probability > 0: ``training.evaluation`` reports the target
policy's mass outside them, and the gate refuses a challenger with too much of it.

``synthetic_transitions`` is a small contextual-bandit world with a known best action, used by the
tests and benchmarks to train without Kafka.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from models.actions import DEFAULT_KERNELS, encode
from models.graph import FEATURE_INDEX, FEATURE_NAMES, ModelGraph
from models.policy import GraphBatch, collate
from training.episodes import GraphState, Transition

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """A collated mini-batch. graphs: B graphs; masks: B bool [1 + N_g * K];
    actions int64 [B]; rewards, propensities float32 [B]; rows: dataset rows int64 [B]."""

    graphs: GraphBatch
    masks: list[np.ndarray]
    actions: Tensor
    rewards: Tensor
    propensities: Tensor
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)


def graph_of(state: GraphState, num_kernels: int, model_id: str = "", run_id: str = "", epoch: int = 0,
             layer_legal: list[bool] | None = None) -> ModelGraph:
    """A collate-ready ModelGraph from an archived state. The record does not carry seed indices,
    so a layer whose GERMINATE actions are legal gets ``dormant_seed=0``, others None
    (``layer_legal``: that per layer, when the caller has it; see ``_layers_legal``)."""
    if layer_legal is None:
        layer_legal = _layers_legal([state], num_kernels)[0]
    return ModelGraph(
        model_id=model_id,
        run_id=run_id,
        layer_names=list(state.layer_names),
        node_features=_as(state.node_features, np.float32),
        edge_index=_as(state.edge_index, np.int64, 2),
        dormant_seed=[0 if ok else None for ok in layer_legal],
        epoch=epoch,
    )


def _layers_legal(states: Sequence[GraphState], num_kernels: int) -> list[list[bool]]:
    """Per state, per layer: is one of its GERMINATE actions legal (one numpy pass over all states;
    each legal mask must have 1 + layers * num_kernels entries)."""
    if not states:
        return []
    flat = np.concatenate([s.legal[1:] for s in states]).reshape(-1, num_kernels).any(axis=1).tolist()
    out, at = [], 0
    for s in states:
        n = len(s.layer_names)
        out.append(flat[at:at + n])
        at += n
    return out


def _as(array: np.ndarray, dtype: type, rows: int | None = None) -> np.ndarray:
    """``array`` when it already is a C-contiguous 2-D array of ``dtype`` (with ``rows`` rows), else
    a converted copy."""
    if (type(array) is np.ndarray and array.dtype == dtype and array.ndim == 2 and array.flags.c_contiguous
            and (rows is None or array.shape[0] == rows)):
        return array
    converted = np.ascontiguousarray(array, dtype=dtype)
    return converted.reshape(rows, -1) if rows is not None else converted


def _problem(t: Transition, num_kernels: int) -> str | None:
    """Why a transition cannot be used with a policy over ``num_kernels`` kernels, or None."""
    s = t.state
    n = len(s.layer_names)
    if s.node_features.shape != (n, len(FEATURE_NAMES)):
        return "feature shape"
    if s.legal.shape != (1 + n * num_kernels,) or np.shape(t.behaviour) != s.legal.shape:
        return "action count"  # another kernel catalog, or a corrupt record
    if not 0 <= t.action < len(s.legal) or not s.legal[t.action]:
        return "illegal action"
    if not t.propensity > 0.0 or not math.isfinite(t.reward):
        return "propensity or reward"
    return None  # edges: _bad_edges, for all transitions at once


def _bad_edges(transitions: Sequence[Transition]) -> np.ndarray:
    """bool [T]: an edge of transition i names a node outside its graph (one numpy pass, not T)."""
    sizes = np.array([t.state.edge_index.shape[1] for t in transitions], dtype=np.int64)
    bad = np.zeros(len(transitions), dtype=bool)
    if not sizes.any():
        return bad
    edges = np.concatenate([t.state.edge_index for t in transitions], axis=1)
    nodes = np.repeat(np.array([len(t.state.layer_names) for t in transitions], dtype=np.int64), sizes)
    wrong = ((edges < 0) | (edges >= nodes)).any(axis=0)
    owners = np.repeat(np.arange(len(transitions)), sizes)
    bad[owners[wrong]] = True
    return bad


@dataclass
class TransitionDataset:
    """Per-transition graphs and masks, and flat arrays over transitions (row i = transition i).

    actions int64 [T]; propensities float64 [T] (mu(a_i|s_i)); rewards float64 [T]; dones bool [T];
    imputed bool [T]; episodes int64 [T] index into ``episode_keys`` ((model_id, run_id));
    behaviour: T float64 arrays [1 + N_i * K], the full logged distributions.
    """

    graphs: list[ModelGraph]
    masks: list[np.ndarray]
    actions: np.ndarray
    propensities: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    imputed: np.ndarray
    behaviour: list[np.ndarray]
    episodes: np.ndarray
    episode_keys: list[tuple[str, str]]
    decision_ids: list[str]
    num_kernels: int = len(DEFAULT_KERNELS)
    skipped: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_transitions(
        cls, transitions: Sequence[Transition], num_kernels: int = len(DEFAULT_KERNELS)
    ) -> "TransitionDataset":
        """Keep the transitions this policy can learn from; count the rest in ``skipped`` by reason."""
        skipped: Counter[str] = Counter()
        kept: list[Transition] = []
        for t in transitions:
            problem = _problem(t, num_kernels)
            if problem is None:
                kept.append(t)
            else:
                skipped[problem] += 1
        bad_edges = _bad_edges(kept)
        if bad_edges.any():
            skipped["edge index"] += int(bad_edges.sum())
            kept = [t for t, bad in zip(kept, bad_edges.tolist()) if not bad]
        if skipped:
            log.warning("skipped %d of %d transitions: %s", sum(skipped.values()), len(transitions), dict(skipped))
        keys: dict[tuple[str, str], int] = {}
        episodes = np.array([keys.setdefault((t.model_id, t.run_id), len(keys)) for t in kept], dtype=np.int64)
        return cls(
            graphs=[graph_of(t.state, num_kernels, t.model_id, t.run_id, t.epoch, legal)
                    for t, legal in zip(kept, _layers_legal([t.state for t in kept], num_kernels))],
            masks=[np.asarray(t.state.legal, dtype=bool) for t in kept],
            actions=np.array([t.action for t in kept], dtype=np.int64),
            propensities=np.array([t.propensity for t in kept], dtype=np.float64),
            rewards=np.array([t.reward for t in kept], dtype=np.float64),
            dones=np.array([t.done for t in kept], dtype=bool),
            imputed=np.array([t.imputed for t in kept], dtype=bool),
            behaviour=[np.asarray(t.behaviour, dtype=np.float64) for t in kept],
            episodes=episodes,
            episode_keys=list(keys),
            decision_ids=[t.decision_id for t in kept],
            num_kernels=num_kernels,
            skipped=dict(skipped),
        )

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def num_episodes(self) -> int:
        return len(np.unique(self.episodes))

    def subset(self, rows: np.ndarray) -> "TransitionDataset":
        """The transitions at ``rows`` (episode keys are kept whole, so ids stay valid)."""
        rows = np.asarray(rows, dtype=np.int64)
        pick = rows.tolist()
        return TransitionDataset(
            graphs=[self.graphs[i] for i in pick],
            masks=[self.masks[i] for i in pick],
            actions=self.actions[rows],
            propensities=self.propensities[rows],
            rewards=self.rewards[rows],
            dones=self.dones[rows],
            imputed=self.imputed[rows],
            behaviour=[self.behaviour[i] for i in pick],
            episodes=self.episodes[rows],
            episode_keys=self.episode_keys,
            decision_ids=[self.decision_ids[i] for i in pick],
            num_kernels=self.num_kernels,
        )

    def batch(self, rows: np.ndarray | Sequence[int]) -> Batch:
        rows = np.asarray(rows, dtype=np.int64)
        pick = rows.tolist()
        return Batch(
            graphs=collate([self.graphs[i] for i in pick]),
            masks=[self.masks[i] for i in pick],
            actions=torch.from_numpy(self.actions[rows]),
            rewards=torch.from_numpy(self.rewards[rows].astype(np.float32)),
            propensities=torch.from_numpy(self.propensities[rows].astype(np.float32)),
            rows=rows,
        )

    def batches(
        self, batch_size: int, rng: np.random.Generator | None = None, drop_last: bool = False
    ) -> Iterator[Batch]:
        """Mini-batches over all rows: shuffled with ``rng``, in order without it."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        order = rng.permutation(len(self)) if rng is not None else np.arange(len(self))
        stop = len(order) - (len(order) % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            yield self.batch(order[start : start + batch_size])

    def summary(self) -> dict[str, float | int]:
        """Counts and reward statistics, for logs and the CLI."""
        waits = int(np.sum(self.actions == 0))
        return {
            "transitions": len(self),
            "episodes": self.num_episodes,
            "wait": waits,
            "germinate": len(self) - waits,
            "imputed_rewards": int(self.imputed.sum()),
            "reward_mean": float(self.rewards.mean()) if len(self) else 0.0,
            "reward_std": float(self.rewards.std()) if len(self) else 0.0,
            "skipped": int(sum(self.skipped.values())),
        }


def split_by_episode(
    data: TransitionDataset, heldout_fraction: float, seed: int = 0
) -> tuple[TransitionDataset, TransitionDataset]:
    """(train, held-out) with whole episodes on one side, so held-out decisions share no run
    with the training data.

    Episodes are ordered by a seeded hash of (model_id, run_id) and the first
    ``round(fraction * episodes)`` (at least 1, at most all but 1) are held out: the split does not
    depend on the order records came off the topic.
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError("heldout_fraction must be in (0, 1)")
    present = np.unique(data.episodes)
    if len(present) < 2:
        raise ValueError(f"need at least 2 episodes to split, have {len(present)}")

    def rank(e: int) -> str:
        model_id, run_id = data.episode_keys[e]
        return hashlib.sha256(f"{seed}\x00{model_id}\x00{run_id}".encode()).hexdigest()

    ordered = sorted(present.tolist(), key=rank)
    n_held = min(max(round(heldout_fraction * len(ordered)), 1), len(ordered) - 1)
    held = np.isin(data.episodes, ordered[:n_held])
    return data.subset(np.flatnonzero(~held)), data.subset(np.flatnonzero(held))


# --------------------------------------------------------------------------- synthetic data

#: In the synthetic world, GERMINATE with this kernel on a layer with health below
#: ``SICK_BELOW`` earns GOOD_REWARD; any other GERMINATE earns BAD_REWARD; WAIT earns 0.
GOOD_KERNEL = 1
SICK_BELOW = 0.5
GOOD_REWARD = 1.0
BAD_REWARD = -0.5


def synthetic_transitions(
    episodes: int = 40,
    steps: int = 10,
    behaviour: str = "uniform",
    epsilon: float = 0.0,
    seed: int = 0,
    num_kernels: int = len(DEFAULT_KERNELS),
    layers: tuple[int, int] = (2, 6),
    noise: float = 0.1,
) -> list[Transition]:
    """A contextual bandit over model graphs with a known best action, logged by ``behaviour``.

    Each decision sees a chain of 2..6 layers with random health; about 3/4 of the layers have a
    dormant seed (legal). Reward: see GOOD_KERNEL / SICK_BELOW / GOOD_REWARD / BAD_REWARD, plus
    Gaussian ``noise``. The expert germinates GOOD_KERNEL on the sickest legal sick layer, else
    WAITs. ``behaviour``: "uniform" over legal actions, or "expert" mixed with ``epsilon`` of
    uniform (epsilon=0: deterministic, propensity 1). Legal masks are the true legal sets.
    """
    if behaviour not in ("uniform", "expert"):
        raise ValueError("behaviour must be 'uniform' or 'expert'")
    if not 0 < GOOD_KERNEL < num_kernels:
        raise ValueError(f"the synthetic world needs at least {GOOD_KERNEL + 1} kernels")
    rng = np.random.default_rng(seed)
    f = len(FEATURE_NAMES)
    out: list[Transition] = []
    for ep in range(episodes):
        model_id, run_id = f"synthetic-{seed}-{ep}", "run-0"
        for step in range(steps):
            n = int(rng.integers(layers[0], layers[1] + 1))
            health = rng.random(n)
            dormant = rng.random(n) < 0.75
            x = np.zeros((n, f), dtype=np.float32)
            for name in ("health_mean", "health_min", "health_last"):
                x[:, FEATURE_INDEX[name]] = health
            x[:, FEATURE_INDEX["has_data"]] = 1.0
            x[:, FEATURE_INDEX["dormant_seed_fraction"]] = np.where(dormant, 0.5, 0.0)
            x[:, FEATURE_INDEX["relative_depth"]] = np.arange(n) / max(n - 1, 1)
            x[:, FEATURE_INDEX["epochs_since_adapted"]] = 1.0
            legal = np.concatenate(([True], np.repeat(dormant, num_kernels)))
            mean_reward = np.zeros(len(legal))
            for i in range(n):
                for k in range(num_kernels):
                    good = k == GOOD_KERNEL and health[i] < SICK_BELOW
                    mean_reward[encode(i, k, num_kernels)] = GOOD_REWARD if good else BAD_REWARD
            uniform = legal / legal.sum()
            if behaviour == "uniform":
                dist = uniform
            else:
                best = int(np.argmax(np.where(legal, mean_reward, -np.inf)))
                sick = np.where(dormant & (health < SICK_BELOW), health, np.inf)
                if np.isfinite(sick).any():
                    best = encode(int(np.argmin(sick)), GOOD_KERNEL, num_kernels)
                expert = np.zeros(len(legal))
                expert[best] = 1.0
                dist = (1.0 - epsilon) * expert + epsilon * uniform
            action = int(rng.choice(len(dist), p=dist))
            state = GraphState(
                layer_names=[f"layers.{i}" for i in range(n)],
                node_features=x,
                edge_index=np.array([np.arange(n - 1), np.arange(1, n)], dtype=np.int64).reshape(2, -1),
                legal=legal,
            )
            out.append(Transition(
                state=state, action=action, propensity=float(dist[action]),
                reward=float(mean_reward[action] + noise * rng.standard_normal()),
                next_state=None, done=step == steps - 1, behaviour=dist.astype(np.float64),
                decision_id=f"{model_id}-{step}", model_id=model_id, epoch=step,
                policy_version=f"synthetic-{behaviour}", run_id=run_id,
            ))
    for prev, nxt in zip(out, out[1:]):
        if prev.model_id == nxt.model_id:
            prev.next_state = nxt.state
    return out


def synthetic_mean_rewards(data: TransitionDataset) -> list[np.ndarray]:
    """The synthetic world's expected reward of every action, per row (float64 [1 + N_i * K]);
    sum_a pi(a|s_i) * table[i][a], averaged over rows, is a policy's true value."""
    k = data.num_kernels
    h = FEATURE_INDEX["health_mean"]
    out = []
    for graph in data.graphs:
        sick = graph.node_features[:, h] < SICK_BELOW
        per_layer = np.full((len(sick), k), BAD_REWARD)
        per_layer[sick, GOOD_KERNEL] = GOOD_REWARD
        out.append(np.concatenate(([0.0], per_layer.reshape(-1))))
    return out


def expert_actions(data: TransitionDataset) -> np.ndarray:
    """The synthetic world's best action per row (for tests: what a good policy should pick)."""
    k = data.num_kernels
    best = np.zeros(len(data), dtype=np.int64)
    h = FEATURE_INDEX["health_mean"]
    for row, (graph, mask) in enumerate(zip(data.graphs, data.masks)):
        layer_legal = mask[1:].reshape(-1, k)[:, GOOD_KERNEL]
        sick = np.where(layer_legal & (graph.node_features[:, h] < SICK_BELOW), graph.node_features[:, h], np.inf)
        if np.isfinite(sick).any():
            best[row] = encode(int(np.argmin(sick)), GOOD_KERNEL, k)
    return best
