"""TransitionDataset: alignment with the transitions, skipping bad rows, episode split, batching."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from models.policy import PolicyConfig, TamiyoPolicyGNN, collate
from training.dataset import (
    TransitionDataset,
    graph_of,
    split_by_episode,
    synthetic_mean_rewards,
    synthetic_transitions,
)
from training.episodes import GraphState


@pytest.fixture(scope="module")
def transitions():
    return synthetic_transitions(episodes=20, steps=5, behaviour="uniform", seed=3)


def test_arrays_line_up_with_the_transitions(transitions) -> None:
    data = TransitionDataset.from_transitions(transitions)
    assert len(data) == len(transitions) == 100
    assert data.num_episodes == 20 and not data.skipped
    for i in (0, 17, 99):
        t = transitions[i]
        assert data.actions[i] == t.action and data.rewards[i] == t.reward
        assert data.propensities[i] == t.propensity == data.behaviour[i][t.action]
        assert data.dones[i] == t.done and data.decision_ids[i] == t.decision_id
        assert data.masks[i][t.action] and data.masks[i][0]
        np.testing.assert_array_equal(data.graphs[i].node_features, t.state.node_features)
        assert data.episode_keys[data.episodes[i]] == (t.model_id, t.run_id)
    assert data.dones.sum() == 20  # one terminal decision per episode
    # Adaptable layers are worked out for all graphs at once: the same as graph_of's, graph by graph.
    assert [g.dormant_seed for g in data.graphs] == [graph_of(t.state, data.num_kernels).dormant_seed
                                                     for t in transitions]
    assert any(None in g.dormant_seed for g in data.graphs) and any(0 in g.dormant_seed for g in data.graphs)


def test_unusable_transitions_are_skipped_and_counted(transitions) -> None:
    good = transitions[:5]
    wrong_kernels = dataclasses.replace(good[0], state=dataclasses.replace(
        good[0].state, legal=np.ones(1 + 2 * len(good[0].state.layer_names), dtype=bool)))
    illegal = dataclasses.replace(good[1], action=len(good[1].state.legal) + 3)
    never = dataclasses.replace(good[2], propensity=0.0)

    def with_edges(t, edges):  # type: ignore[no-untyped-def]
        return dataclasses.replace(t, state=dataclasses.replace(t.state, edge_index=np.array(edges, np.int64)))

    n = len(good[3].state.layer_names)
    past_the_end = with_edges(good[3], [[0], [n]])
    negative = with_edges(good[4], [[-1, 0], [0, 1]])
    no_edges = with_edges(good[4], np.zeros((2, 0)))
    mixed = [good[0], past_the_end, good[1], wrong_kernels, illegal, no_edges, negative, never, good[2], good[3],
             good[4]]
    data = TransitionDataset.from_transitions(mixed)
    assert data.skipped == {"action count": 1, "illegal action": 1, "propensity or reward": 1, "edge index": 2}
    assert data.decision_ids == [t.decision_id for t in (good[0], good[1], no_edges, good[2], good[3], good[4])]
    np.testing.assert_array_equal(data.actions, [t.action for t in (good[0], good[1], no_edges, good[2], good[3],
                                                                     good[4])])
    assert data.graphs[2].edge_index.shape == (2, 0)
    assert len(TransitionDataset.from_transitions([no_edges])) == 1  # nothing to check at all


def test_graph_of_marks_layers_with_legal_actions_as_adaptable() -> None:
    state = GraphState(["a", "b", "c"], np.zeros((3, 19), np.float32), np.array([[0, 1], [1, 2]]),
                       np.array([True, False, False, False, True, False, False, False, False, True]))
    graph = graph_of(state, num_kernels=3)
    assert graph.dormant_seed == [None, 0, 0]
    assert collate([graph]).num_graphs == 1


def test_split_keeps_episodes_whole_and_ignores_record_order(transitions) -> None:
    data = TransitionDataset.from_transitions(transitions)
    train, held = split_by_episode(data, 0.25, seed=1)
    assert len(train) + len(held) == len(data)
    train_eps = {train.episode_keys[e] for e in train.episodes}
    held_eps = {held.episode_keys[e] for e in held.episodes}
    assert not train_eps & held_eps and len(held_eps) == 5 and len(train_eps) == 15

    shuffled = [transitions[i] for i in np.random.default_rng(0).permutation(len(transitions))]
    _, held_again = split_by_episode(TransitionDataset.from_transitions(shuffled), 0.25, seed=1)
    assert {held_again.episode_keys[e] for e in held_again.episodes} == held_eps
    _, other = split_by_episode(data, 0.25, seed=2)
    assert {other.episode_keys[e] for e in other.episodes} != held_eps

    single = TransitionDataset.from_transitions([t for t in transitions if t.model_id == transitions[0].model_id])
    with pytest.raises(ValueError, match="at least 2 episodes"):
        split_by_episode(single, 0.3)


def test_batches_cover_every_row_once_and_feed_the_policy(transitions) -> None:
    data = TransitionDataset.from_transitions(transitions)
    rows = np.concatenate([b.rows for b in data.batches(32, np.random.default_rng(0))])
    assert sorted(rows.tolist()) == list(range(len(data))) and rows.tolist() != list(range(len(data)))
    batch = next(data.batches(16))
    assert torch.equal(batch.actions, torch.from_numpy(data.actions[:16]))
    assert torch.allclose(batch.rewards, torch.from_numpy(data.rewards[:16]).float())
    policy = TamiyoPolicyGNN(PolicyConfig(hidden_dim=16))
    out = policy.log_probs(batch.graphs, batch.masks)
    taken = out.log_probs.gather(1, batch.actions[:, None])
    assert torch.isfinite(taken).all()  # every logged action is legal under its mask
    assert len(list(data.batches(32, drop_last=True))) == len(data) // 32


def test_synthetic_world_rewards_match_its_table(transitions) -> None:
    data = TransitionDataset.from_transitions(transitions)
    table = synthetic_mean_rewards(data)
    mean_of_taken = np.array([row[a] for row, a in zip(table, data.actions)])
    assert np.abs(data.rewards - mean_of_taken).max() < 0.6  # noise sd 0.1
    assert np.corrcoef(data.rewards, mean_of_taken)[0, 1] > 0.95
