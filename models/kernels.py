"""The kernel catalog: small residual adapters a seed can grow into.

Every kernel maps the layer's input to a correction of its pre-activation output. The last layer
of every kernel is zero-initialised, so a freshly attached kernel is an exact no-op and the host's
output does not jump when a seed germinates.
"""

from __future__ import annotations

from torch import nn

# The order is part of the contract: action indices are 1 + layer * len(KERNELS) + kernel.
KERNELS: tuple[str, ...] = ("mlp_small", "mlp_wide", "lowrank")

_BOTTLENECK = {"mlp_small": 8, "mlp_wide": 32}
_RANK = 4


def _check(name: str) -> None:
    if name not in KERNELS:
        raise ValueError(f"unknown kernel {name!r}; the catalog is {', '.join(KERNELS)}")


def build_kernel(name: str, in_features: int, out_features: int) -> nn.Module:
    """A new kernel module ``in_features -> out_features`` whose output is zero at creation."""
    _check(name)
    if name in _BOTTLENECK:
        width = _BOTTLENECK[name]
        kernel = nn.Sequential(nn.Linear(in_features, width), nn.ReLU(), nn.Linear(width, out_features))
    else:
        kernel = nn.Sequential(nn.Linear(in_features, _RANK, bias=False), nn.Linear(_RANK, out_features, bias=False))
    last = kernel[-1]
    nn.init.zeros_(last.weight)
    if last.bias is not None:
        nn.init.zeros_(last.bias)
    return kernel


def kernel_parameter_count(name: str, in_features: int, out_features: int) -> int:
    """Parameters a kernel adds, computed without building it (the simulation uses this)."""
    _check(name)
    if name in _BOTTLENECK:
        width = _BOTTLENECK[name]
        return in_features * width + width + width * out_features + out_features
    return _RANK * (in_features + out_features)
