"""Policy inference speed, one thread: single-graph latency, batched throughput, PyG baseline.

Graphs are real policy inputs: topologies of simulated models (8–16 layers) with one round of
health signals folded into window aggregates and turned into ``ModelGraph``s by ``build_graph``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from tamiyo.bench.harness import Results, Target, percentile, progress


@dataclass
class PolicyConfigBench:
    runs: int = 3
    single_calls: int = 2000
    single_warmup: int = 200
    batch_sizes: tuple[int, ...] = (256, 512, 1024)
    graphs_per_run: int = 24_576  # graphs pushed through per batch size and run (fewer: too noisy on 2 CPUs)
    seed: int = 0
    layers: tuple[int, int] = field(default=(8, 16))


def policy_graphs(count: int, seed: int = 0, num_layers: int | None = None) -> list:
    """``count`` ModelGraphs of simulated models (one health round each), 8–16 layers unless fixed."""
    from hosts.simulation import SimulatedModel
    from models.graph import build_graph, update_layer_aggregate

    graphs = []
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(count)]
    for i, rng in enumerate(rngs):
        model = SimulatedModel(f"g{i}", rng, num_layers=num_layers)
        topology = model.topology()
        aggregates: dict = {}
        for signal in model.health_signals():
            aggregates[signal["layer_name"]] = update_layer_aggregate(aggregates.get(signal["layer_name"]), signal)
        graphs.append(build_graph(topology, aggregates, {}, 0))
    return graphs


def _policy():
    import torch

    from models.policy import PolicyConfig, TamiyoPolicyGNN

    torch.manual_seed(0)
    return TamiyoPolicyGNN(PolicyConfig()).eval()


def _masks(graphs: list, k: int) -> list[np.ndarray]:
    from models.actions import legal_mask

    return [legal_mask(g, k) for g in graphs]


def bench_single(results: Results, cfg: PolicyConfigBench) -> None:
    import torch

    from models.policy import collate

    torch.set_num_threads(1)
    policy = _policy()
    graph = policy_graphs(1, cfg.seed, num_layers=12)[0]
    mask = _masks([graph], policy.num_kernels)
    p50s, p99s = [], []
    for run in range(cfg.runs):
        for _ in range(cfg.single_warmup):
            policy.distributions(collate([graph]), mask)
        times = []
        for _ in range(cfg.single_calls):
            t0 = time.perf_counter()
            policy.distributions(collate([graph]), mask)
            times.append((time.perf_counter() - t0) * 1000.0)
        p50s.append(percentile(times, 50))
        p99s.append(percentile(times, 99))
        progress(f"  policy single run {run + 1}/{cfg.runs}: p50 {p50s[-1]:.3f} ms, p99 {p99s[-1]:.3f} ms")
    extra = dict(nodes=12, threads=1, calls_per_run=cfg.single_calls, path="collate + distributions",
                 hidden=policy.config.hidden_dim, gnn_layers=policy.config.num_gnn_layers)
    results.add("policy_single_p50_ms", p50s, "ms", **extra)
    results.add("policy_single_p99_ms", p99s, "ms", Target("<=", 1.0), **extra)


def bench_batched(results: Results, cfg: PolicyConfigBench) -> None:
    import torch

    from models.policy import collate

    torch.set_num_threads(1)
    policy = _policy()
    biggest = max(cfg.batch_sizes)
    graphs = policy_graphs(biggest * 2, cfg.seed)
    masks = _masks(graphs, policy.num_kernels)
    nodes = [g.num_nodes for g in graphs]
    by_size: dict[int, list[float]] = {b: [] for b in cfg.batch_sizes}
    base_by_size: dict[int, list[float]] = {b: [] for b in cfg.batch_sizes}
    pyg_data = _pyg_data(graphs)
    for run in range(cfg.runs):
        for b in cfg.batch_sizes:
            starts = [i % (len(graphs) - b + 1) for i in range(0, cfg.graphs_per_run, b)]
            policy.distributions(collate(graphs[:b]), masks[:b])  # warm-up
            t0 = time.perf_counter()
            for s in starts:
                policy.distributions(collate(graphs[s:s + b]), masks[s:s + b])
            by_size[b].append(len(starts) * b / (time.perf_counter() - t0))
            base_by_size[b].append(_pyg_rate(policy, pyg_data, starts, b))
        progress(f"  policy batched run {run + 1}/{cfg.runs}: "
                 + ", ".join(f"b{b}: {by_size[b][-1]:,.0f}/s vs PyG {base_by_size[b][-1]:,.0f}/s"
                             for b in cfg.batch_sizes))
    # The metric is the slowest batch size in the range, per run (a conservative figure).
    worst = [min(by_size[b][r] for b in cfg.batch_sizes) for r in range(cfg.runs)]
    worst_base = [min(base_by_size[b][r] for b in cfg.batch_sizes) for r in range(cfg.runs)]
    per_size = {f"batch_{b}": round(float(np.median(v))) for b, v in by_size.items()}
    base_per_size = {f"batch_{b}": round(float(np.median(v))) for b, v in base_by_size.items()}
    common = dict(threads=1, batch_sizes=list(cfg.batch_sizes), nodes_per_graph=f"{min(nodes)}-{max(nodes)}",
                  value_is="slowest batch size, per run")
    results.add("policy_batched_graphs_per_s", worst, "graphs/s", Target(">=", 20_000),
                path="collate + distributions", per_batch_size=per_size, **common)
    results.add("pyg_batch_baseline_graphs_per_s", worst_base, "graphs/s",
                path="Batch.from_data_list + forward (reference GCNConv path) + per-graph softmax (no masks)",
                per_batch_size=base_per_size, **common)
    ratio = [w / b for w, b in zip(worst, worst_base)]
    results.add("policy_batched_vs_pyg_ratio", ratio, "x", Target(">=", 2.0),
                note="per run: batched / PyG baseline at their slowest batch size")


def _pyg_data(graphs: list) -> list:
    """torch_geometric Data per graph with the same undirected edges ``collate`` builds (made once,
    outside the timing: the baseline is only charged for batching and the forward pass)."""
    import torch
    from torch_geometric.data import Data

    out = []
    for g in graphs:
        ei = g.edge_index
        both = np.concatenate([ei, ei[::-1]], axis=1) if ei.size else ei.reshape(2, 0)
        out.append(Data(x=torch.from_numpy(g.node_features), edge_index=torch.from_numpy(np.ascontiguousarray(both)),
                        num_nodes=g.num_nodes))
    return out


def _pyg_rate(policy, data: list, starts: list[int], b: int) -> float:  # type: ignore[no-untyped-def]
    import torch
    from torch_geometric.data import Batch

    from torch_geometric.utils import softmax as group_softmax

    def one(chunk: list) -> None:
        batch = Batch.from_data_list(chunk)
        g = batch.num_graphs
        out = policy(batch.x, batch.edge_index, batch.batch, g)
        # Per-graph softmax over WAIT + every node's kernel logits (distributions() without masks).
        k = out.node_logits.shape[1]
        values = torch.cat((out.wait_logits, out.node_logits.reshape(-1)))
        groups = torch.cat((torch.arange(g), batch.batch.repeat_interleave(k)))
        group_softmax(values, groups, num_nodes=g)

    with torch.inference_mode():
        one(data[:b])  # warm-up
        t0 = time.perf_counter()
        for s in starts:
            one(data[s:s + b])
        return len(starts) * b / (time.perf_counter() - t0)
