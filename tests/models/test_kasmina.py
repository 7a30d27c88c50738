"""KasminaLayer lifecycle, blending, telemetry, kernels and the host network's topology."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from models.host_net import KasminaMLP
from models.kasmina import KasminaLayer, SeedError, SeedState, health_score
from models.kernels import KERNELS, build_kernel, kernel_parameter_count
from schemas import decode_as, encode

HEALTH_KEYS = {
    "health_score", "activation_variance", "dead_neuron_ratio", "avg_correlation", "gradient_norm",
    "execution_latency_ms", "error_count", "active_seeds", "total_seeds", "seed_states",
}


def layer(**kwargs) -> KasminaLayer:
    torch.manual_seed(0)
    return KasminaLayer("layers.0", 12, 8, activation=nn.ReLU(), **kwargs)


def train_steps(module: nn.Module, in_features: int, steps: int = 5, batch: int = 32) -> None:
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.01)
    module.train()
    for _ in range(steps):
        opt.zero_grad()
        module(torch.randn(batch, in_features)).pow(2).mean().backward()
        opt.step()


def test_catalog_order_and_unknown_kernel() -> None:
    assert KERNELS == ("mlp_small", "mlp_wide", "lowrank")
    with pytest.raises(ValueError, match="mlp_small, mlp_wide, lowrank"):
        build_kernel("conv", 4, 4)
    with pytest.raises(ValueError, match="catalog"):
        kernel_parameter_count("conv", 4, 4)


@pytest.mark.parametrize("name", KERNELS)
def test_kernels_start_as_no_op_and_count_parameters(name: str) -> None:
    kernel = build_kernel(name, 20, 7)
    assert torch.equal(kernel(torch.randn(5, 20)), torch.zeros(5, 7))
    assert sum(p.numel() for p in kernel.parameters()) == kernel_parameter_count(name, 20, 7)


def test_lifecycle_transitions_and_alpha_ramp() -> None:
    l = layer(blend_epochs=4, training_epochs=2, train_alpha=0.1)
    assert l.seed_states() == ["DORMANT"] * 4
    l.germinate(1, "mlp_small")
    seen = []
    for _ in range(9):
        seen.append((l.seeds[1].state.value, round(l.alpha(1), 3)))
        l.advance_epoch()
    assert seen == [
        ("GERMINATED", 0.1), ("TRAINING", 0.1), ("TRAINING", 0.1),
        ("BLENDING", 0.25), ("BLENDING", 0.5), ("BLENDING", 0.75), ("BLENDING", 1.0),
        ("FOSSILIZED", 1.0), ("FOSSILIZED", 1.0),
    ]
    assert all(not p.requires_grad for p in l.kernels["1"].parameters())  # fossilized = frozen
    assert l.seed_states()[0] == "DORMANT" and l.alpha(0) == 0.0


def test_germinate_errors() -> None:
    l = layer(num_seeds=2)
    with pytest.raises(SeedError, match="out of range"):
        l.germinate(2, "mlp_small")
    with pytest.raises(SeedError, match="unknown kernel"):
        l.germinate(0, "conv")
    l.germinate(0, "lowrank")
    with pytest.raises(SeedError, match="GERMINATED, not DORMANT"):
        l.germinate(0, "lowrank")
    with pytest.raises(SeedError, match="holds no kernel"):
        l.seed_parameters(1)


def test_parameter_delta_equals_kernel_size_and_cull_returns_it() -> None:
    l = layer()
    before = l.layer_spec()["parameter_count"]
    delta = l.germinate(0, "mlp_wide")
    assert delta == kernel_parameter_count("mlp_wide", 12, 8) > 0
    assert l.layer_spec()["parameter_count"] == before + delta
    assert sum(p.numel() for p in l.seed_parameters(0)) == delta
    assert l.cull(0) == -delta
    assert l.seed_states()[0] == SeedState.CULLED.value
    assert l.layer_spec()["parameter_count"] == before
    with pytest.raises(SeedError, match="only a growing seed"):
        l.cull(0)
    with pytest.raises(SeedError, match="not DORMANT"):
        l.germinate(0, "mlp_small")  # culled slots are not reused


def test_germination_is_a_no_op_then_the_seed_learns() -> None:
    l = layer()
    x = torch.randn(16, 12)
    before = l(x).detach()
    l.germinate(0, "mlp_small")
    assert torch.allclose(l(x), before)
    opt = torch.optim.Adam(l.seed_parameters(0), lr=0.01)
    target = torch.randn(16, 8).relu()
    for _ in range(20):
        opt.zero_grad()
        (l(x) - target).pow(2).mean().backward()
        opt.step()
    assert not torch.allclose(l(x), before)  # the TRAINING seed gets gradients at alpha=train_alpha


def test_health_from_real_activations_and_gradients() -> None:
    l = layer()
    train_steps(l, 12)
    h = l.health()
    assert set(h) == HEALTH_KEYS
    assert 0.0 <= h["health_score"] <= 1.0 and 0.0 <= h["dead_neuron_ratio"] <= 1.0
    assert -1.0 <= h["avg_correlation"] <= 1.0
    assert h["activation_variance"] > 0 and h["gradient_norm"] > 0 and h["execution_latency_ms"] > 0
    assert h["error_count"] == 0 and h["total_seeds"] == 4 and h["active_seeds"] == 0
    assert h["seed_states"] == ["DORMANT"] * 4
    idle = l.health()  # the interval was reset
    assert idle["gradient_norm"] == 0.0 and idle["activation_variance"] == 0.0 and idle["health_score"] == 1.0
    # The Avro contract accepts it.
    record = {"model_id": "m", "run_id": "r", "layer_name": l.name, "epoch": 0, "step": 5, "timestamp_ms": 1, **h}
    assert decode_as("HealthSignal", encode("HealthSignal", record))["layer_name"] == "layers.0"


def test_health_sees_dead_units_and_non_finite_values() -> None:
    l = layer()
    with torch.no_grad():
        l.linear.weight[:4].zero_()
        l.linear.bias[:4].fill_(-1.0)  # units 0-3 never fire
    train_steps(l, 12, steps=2)
    h = l.health()
    assert h["dead_neuron_ratio"] >= 0.5
    l.train()
    l(torch.full((4, 12), float("nan")))
    bad = l.health()
    assert bad["error_count"] >= 1 and bad["health_score"] == 0.0


def test_health_score_formula() -> None:
    assert health_score(0.0, 1.0, 0.0, 0.05, 0) > 0.95
    assert health_score(0.8, 1.0, 0.0, 0.05, 0) == pytest.approx(0.2, abs=0.01)
    assert health_score(0.0, 1.0, 1.0, 0.05, 0) == 0.0
    assert health_score(0.0, 1.0, 0.0, 1e-6, 0) < 0.05
    assert health_score(0.0, 1e-7, 0.0, None, 0) < 0.01
    assert health_score(0.0, 1.0, 0.0, 0.05, 3) == 0.0


def test_host_network_topology_and_layers() -> None:
    net = KasminaMLP(hidden=(16, 8))
    assert list(net.kasmina_layers) == ["layers.0", "layers.1", "layers.2"]
    topo = net.topology()
    assert [l["input_size"] for l in topo["layers"]] == [64, 16, 8]
    assert [l["output_size"] for l in topo["layers"]] == [16, 8, 10]
    assert topo["edges"] == [{"source": "layers.0", "target": "layers.1"}, {"source": "layers.1", "target": "layers.2"}]
    assert sum(l["parameter_count"] for l in topo["layers"]) == sum(p.numel() for p in net.parameters())
    assert net(torch.randn(3, 64)).shape == (3, 10)
    record = {"model_id": "m", "run_id": "r", "timestamp_ms": 1, **topo}
    assert decode_as("ModelTopology", encode("ModelTopology", record))["edges"] == topo["edges"]
    assert not math.isnan(net.kasmina_layers["layers.2"].health()["health_score"])
