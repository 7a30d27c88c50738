"""GNN policy, fast collate path and the threshold heuristic (models.policy, models.heuristic)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch, Data

from models.actions import encode, legal_mask, num_actions
from models.graph import FEATURE_INDEX, FEATURE_NAMES, ModelGraph
from models.heuristic import ThresholdHeuristic
from models.policy import DENSE_MAX_NODES, PolicyConfig, TamiyoPolicyGNN, collate

K = 3


def graph(n: int, rng: np.random.Generator, dormant_every: int = 1, edges: list[tuple[int, int]] | None = None,
          health: list[float] | None = None, has_data: list[float] | None = None) -> ModelGraph:
    x = rng.normal(size=(n, len(FEATURE_NAMES))).astype(np.float32)
    x[:, FEATURE_INDEX["has_data"]] = 1.0 if has_data is None else has_data
    if health is not None:
        x[:, FEATURE_INDEX["health_mean"]] = health
    e = [(i, i + 1) for i in range(n - 1)] if edges is None else edges
    return ModelGraph(
        model_id=f"m{n}",
        run_id="r",
        layer_names=[f"layer{i}" for i in range(n)],
        node_features=x,
        edge_index=np.asarray(e, dtype=np.int64).reshape(-1, 2).T.copy(),
        dormant_seed=[0 if i % dormant_every == 0 else None for i in range(n)],
        epoch=1,
    )


@pytest.fixture
def policy() -> TamiyoPolicyGNN:
    torch.manual_seed(0)
    return TamiyoPolicyGNN(PolicyConfig()).eval()


@pytest.fixture
def graphs() -> list[ModelGraph]:
    rng = np.random.default_rng(0)
    return [graph(n, rng, dormant_every=2 if n % 2 else 1) for n in (1, 5, 12, 3, 16, 8)]


def test_config_roundtrip_and_strictness() -> None:
    cfg = PolicyConfig(hidden_dim=32, num_gnn_layers=2)
    assert PolicyConfig.from_dict(cfg.to_dict()) == cfg
    assert PolicyConfig().node_feature_dim == len(FEATURE_NAMES)
    with pytest.raises(ValueError, match="unknown"):
        PolicyConfig.from_dict({**cfg.to_dict(), "extra": 1})


@pytest.mark.parametrize("dense_max_nodes", [DENSE_MAX_NODES, 0], ids=["dense", "csr"])
def test_collate_offsets_and_undirected_dedup(dense_max_nodes: int) -> None:
    rng = np.random.default_rng(0)
    g1 = graph(3, rng, edges=[(0, 1), (1, 0), (1, 2), (2, 2)])  # mutual pair, self-loop: counted once
    g2 = graph(2, rng, edges=[(1, 0)])
    b = collate([g1, g2], dense_max_nodes=dense_max_nodes)
    assert b.ptr.tolist() == [0, 3, 5] and b.batch.tolist() == [0, 0, 0, 1, 1]
    pairs = sorted(map(tuple, b.edge_index.T.tolist()))
    assert pairs == [(0, 1), (1, 0), (1, 2), (2, 1), (3, 4), (4, 3)]
    assert torch.equal(b.x, torch.from_numpy(np.concatenate([g1.node_features, g2.node_features])))
    bad = graph(2, rng, edges=[(0, 2)])  # node 2 does not exist in a 2-node graph
    with pytest.raises(ValueError, match="outside"):
        collate([g1, bad])
    with pytest.raises(ValueError, match="outside"):
        collate([bad])  # one graph takes its own path
    one = collate([g1], dense_max_nodes=dense_max_nodes)
    assert not np.shares_memory(one.x_np, g1.node_features)
    assert sorted(map(tuple, one.edge_index.T.tolist())) == pairs[:4] and one.ptr.tolist() == [0, 3]
    # GCN propagation matrix D^-1/2 (A + I) D^-1/2: node 1 has degree 3 (two neighbours + self)
    adj = (b.adj if dense_max_nodes else b.adj.to_dense()).numpy()
    assert b.adj.layout == (torch.strided if dense_max_nodes else torch.sparse_csr)
    a = np.zeros((5, 5))
    for s, d in pairs:
        a[d, s] = 1.0
    a += np.eye(5)
    dinv = a.sum(axis=1) ** -0.5
    np.testing.assert_allclose(adj, dinv[:, None] * a * dinv[None, :], rtol=1e-6)
    assert adj[1, 1] == pytest.approx(1 / 3) and adj[1, 0] == pytest.approx((2 * 3) ** -0.5)
    if not dense_max_nodes:  # int32 indices: torch's CPU sparse.mm is several times slower with int64 ones.
        assert b.adj.crow_indices().dtype == b.adj.col_indices().dtype == torch.int32


def test_dense_and_sparse_propagation_agree_in_outputs_and_gradients(policy, graphs) -> None:
    masks = [legal_mask(g, K) for g in graphs]
    dense, sparse = collate(graphs), collate(graphs, dense_max_nodes=0)
    assert dense.adj.layout == torch.strided and sparse.adj.layout == torch.sparse_csr
    grads = []
    for b in (dense, sparse):
        policy.zero_grad()
        out = policy.log_probs(b, masks)
        (out.values.sum() + out.entropy.sum()).backward()
        grads.append([p.grad.clone() for p in policy.parameters()])
        with torch.no_grad():
            fwd = policy.forward_batch(b, dropout=False)
        grads[-1].append(fwd)
    for a, c in zip(grads[0][:-1], grads[1][:-1]):
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-4)
    for a, c in zip(grads[0][-1], grads[1][-1]):
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)
    assert any(g.abs().sum() > 0 for g in grads[0][:-1])


def test_one_graph_takes_the_same_maths_as_a_batch(policy, graphs) -> None:
    """A single graph (the decision path: no padding, pooling without scatter) gives what the same
    graph gives inside a batch, for the forward pass and the distributions."""
    masks = [legal_mask(g, K, blocked_layers={"layer0"}) for g in graphs]
    batch_probs, batch_values = policy.distributions(collate(graphs), masks)
    with torch.no_grad():
        whole = policy.forward_batch(collate(graphs), dropout=False)
    ptr = np.concatenate([[0], np.cumsum([g.num_nodes for g in graphs])])
    for i, (g, m) in enumerate(zip(graphs, masks)):
        one = collate([g])
        assert one.layout(K).counts.tolist() == [1 + g.num_nodes * K]
        probs, values = policy.distributions(one, [m])
        np.testing.assert_allclose(probs[0], batch_probs[i], atol=1e-6)
        assert values[0] == pytest.approx(batch_values[i], abs=1e-6)
        assert probs[0][~m].sum() == 0 and probs[0].sum() == pytest.approx(1.0)
        with torch.no_grad():
            alone = policy.forward_batch(one, dropout=False)
        torch.testing.assert_close(alone.node_logits, whole.node_logits[ptr[i]:ptr[i + 1]], atol=1e-5, rtol=1e-5)


def test_output_shapes_and_fast_path_matches_gcnconv(policy, graphs) -> None:
    b = collate(graphs)
    n = sum(g.num_nodes for g in graphs)
    with torch.no_grad():
        ref = policy(b.x, b.edge_index, b.batch, b.num_graphs)
        fast = policy.forward_batch(b)
    assert ref.node_logits.shape == (n, K)
    assert ref.wait_logits.shape == ref.values.shape == (len(graphs),)
    for a, c in zip(ref, fast):
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)


def test_fast_path_matches_torch_geometric_batch(policy, graphs) -> None:
    data = [Data(x=torch.from_numpy(g.node_features),
                 edge_index=torch.from_numpy(np.concatenate([g.edge_index, g.edge_index[::-1]], axis=1)))
            for g in graphs]
    pb = Batch.from_data_list(data)
    with torch.no_grad():
        ref = policy(pb.x, pb.edge_index, pb.batch, pb.num_graphs)
        fast = policy.forward_batch(collate(graphs))
    for a, c in zip(ref, fast):
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)


def test_distributions_respect_masks_and_action_order(policy, graphs) -> None:
    masks = [legal_mask(g, K, blocked_layers={"layer1"}) for g in graphs]
    b = collate(graphs)
    probs, values = policy.distributions(b, masks)
    with torch.no_grad():
        out = policy.forward_batch(b)
    assert values.shape == (len(graphs),)
    for gi, (g, p, m) in enumerate(zip(graphs, probs, masks)):
        assert p.shape == (num_actions(g.num_nodes, K),) and p.dtype == np.float64
        assert p.sum() == pytest.approx(1.0, abs=1e-12)
        assert np.all(p[~m] == 0.0) and np.all(p[m] > 0.0)
        # index order: 0 = WAIT, encode(i, k) = node i kernel k, softmax over legal only
        lo = b.ptr[gi]
        logits = np.full(p.shape, -np.inf)
        logits[0] = out.wait_logits[gi].item()
        for i in range(g.num_nodes):
            for k in range(K):
                logits[encode(i, k, K)] = out.node_logits[lo + i, k].item()
        logits[~m] = -np.inf
        expected = np.exp(logits - logits.max())
        np.testing.assert_allclose(p, expected / expected.sum(), rtol=1e-5, atol=1e-7)
    # layer1 of the 12-node graph has a dormant seed but is blocked; layer2 is not
    assert probs[2][encode(1, 0, K): encode(1, K - 1, K) + 1].sum() == 0.0
    assert probs[2][encode(2, 0, K): encode(2, K - 1, K) + 1].min() > 0.0


def test_batched_equals_per_graph(policy, graphs) -> None:
    masks = [legal_mask(g, K, ()) for g in graphs]
    probs, values = policy.distributions(collate(graphs), masks)
    for g, m, p, v in zip(graphs, masks, probs, values):
        p1, v1 = policy.distributions(collate([g]), [m])
        np.testing.assert_allclose(p, p1[0], rtol=1e-5, atol=1e-7)
        assert v == pytest.approx(v1[0], abs=1e-5)


def test_empty_graph_and_empty_batch(policy) -> None:
    rng = np.random.default_rng(0)
    empty = graph(0, rng)
    two = graph(2, rng)
    probs, values = policy.distributions(collate([empty, two]), [np.array([True]), legal_mask(two, K)])
    assert probs[0].tolist() == [1.0] and np.isfinite(values).all()
    probs, values = policy.distributions(collate([]), [])
    assert probs == [] and values.shape == (0,)


def test_bad_masks_are_rejected(policy, graphs) -> None:
    b = collate(graphs)
    masks = [legal_mask(g, K) for g in graphs]
    with pytest.raises(ValueError):
        policy.distributions(b, masks[:-1])
    with pytest.raises(ValueError):
        policy.distributions(b, [m[:-1] for m in masks])
    masks[0][0] = False
    with pytest.raises(ValueError, match="WAIT"):
        policy.distributions(b, masks)


def test_log_probs_match_distributions_and_have_gradients(graphs) -> None:
    torch.manual_seed(1)
    policy = TamiyoPolicyGNN().eval()
    masks = [legal_mask(g, K, {"layer0"}) for g in graphs]
    b = collate(graphs)
    lp = policy.log_probs(b, masks)
    probs, _ = policy.distributions(b, masks)
    assert lp.log_probs.shape == (len(graphs), max(len(m) for m in masks))
    assert lp.num_actions.tolist() == [len(m) for m in masks]
    for row, p, count in zip(lp.log_probs, probs, lp.num_actions.tolist()):
        np.testing.assert_allclose(row[:count].exp().detach().numpy(), p, rtol=1e-5, atol=1e-7)
        assert torch.isneginf(row[count:]).all()
    expected_entropy = [-(p[p > 0] * np.log(p[p > 0])).sum() for p in probs]
    np.testing.assert_allclose(lp.entropy.detach().numpy(), expected_entropy, rtol=1e-4)

    policy.train()
    lp = policy.log_probs(b, masks)
    actions = torch.zeros(len(graphs), 1, dtype=torch.long)
    loss = -lp.log_probs.gather(1, actions).sum() - 0.01 * lp.entropy.sum() + lp.values.pow(2).sum()
    loss.backward()
    grads = [p.grad for p in policy.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert policy.gnn_layers[0].lin.weight.grad.abs().sum() > 0


def test_version_attribute() -> None:
    p = TamiyoPolicyGNN()
    assert p.version == "untrained" and p.num_kernels == 3
    p.version = "tamiyo/7"
    assert p.version == "tamiyo/7"


# --------------------------------------------------------------------------- heuristic


def _heuristic_choice(graphs: list[ModelGraph], masks, **kw) -> list[int]:
    probs, values = ThresholdHeuristic(**kw).distributions(collate(graphs), masks)
    assert all(p.sum() == 1.0 and p.max() == 1.0 for p in probs)  # exact one-hot
    assert np.all(values == 0.0)
    return [int(np.argmax(p)) for p in probs]


def test_heuristic_picks_lowest_health_layer_below_threshold() -> None:
    rng = np.random.default_rng(0)
    sick = graph(4, rng, health=[0.9, 0.25, 0.1, 0.6])
    fine = graph(3, rng, health=[0.5, 0.31, 0.9])
    tie = graph(3, rng, health=[0.9, 0.2, 0.2])
    gs = [sick, fine, tie]
    assert _heuristic_choice(gs, [legal_mask(g, K) for g in gs]) == [encode(2, 0, K), 0, encode(1, 0, K)]
    assert ThresholdHeuristic().version == "heuristic-v1"


def test_heuristic_skips_illegal_and_dataless_layers() -> None:
    rng = np.random.default_rng(0)
    g = graph(4, rng, health=[0.9, 0.25, 0.1, 0.05], has_data=[1, 1, 1, 0])
    # layer3 has no data, layer2 is blocked -> next sickest legal layer is layer1
    assert _heuristic_choice([g], [legal_mask(g, K, {"layer2"})]) == [encode(1, 0, K)]
    g.dormant_seed[1] = None
    assert _heuristic_choice([g], [legal_mask(g, K, {"layer2"})]) == [0]
    wait_only = np.zeros(num_actions(4, K), dtype=bool)
    wait_only[0] = True
    assert _heuristic_choice([graph(4, rng, health=[0.0] * 4)], [wait_only]) == [0]


def test_heuristic_soft_margin_and_other_kernel() -> None:
    rng = np.random.default_rng(0)
    g = graph(2, rng, health=[0.1, 0.9])
    m = legal_mask(g, K)
    probs, _ = ThresholdHeuristic(margin=5.0, kernel=2).distributions(collate([g]), [m])
    p = probs[0]
    assert int(np.argmax(p)) == encode(0, 2, K)
    assert 0.5 < p.max() < 1.0 and np.all(p[m] > 0) and p.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        ThresholdHeuristic(kernel=3)


def test_distributions_never_use_dropout(graphs) -> None:
    torch.manual_seed(0)
    policy = TamiyoPolicyGNN(PolicyConfig(dropout=0.5)).train()
    b = collate(graphs)
    masks = [legal_mask(g, K) for g in graphs]
    first, _ = policy.distributions(b, masks)
    second, _ = policy.distributions(b, masks)
    assert policy.training  # not silently switched
    for a, c in zip(first, second):
        assert np.array_equal(a, c)
    lp1, lp2 = policy.log_probs(b, masks), policy.log_probs(b, masks)  # training: dropout active
    assert not torch.equal(lp1.values, lp2.values)


def test_a_worker_serving_the_heuristic_never_imports_torch_geometric() -> None:
    """PyG (and the torch._dynamo it loads) costs every process ~2.5 s at start: only building a
    network may import it. A fresh interpreter, since this test module imports PyG itself."""
    import subprocess
    import sys

    script = ("import sys, streams.worker, hosts.fleet, models.decide, models.heuristic\n"
              "assert 'torch_geometric' not in sys.modules, 'imported by a module'\n"
              "import warnings; warnings.simplefilter('error')\n"
              "from models.policy import TamiyoPolicyGNN; TamiyoPolicyGNN()\n"  # PyG's own FutureWarning is kept out
              "assert 'torch_geometric.nn' in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
