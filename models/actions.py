"""The flat action space of one model graph with N layers and K kernels.

Index 0 is WAIT; index ``1 + i * K + k`` is GERMINATE layer i (its first dormant seed) with
kernel k. A graph therefore has ``1 + N * K`` actions, the same order as the archived
DecisionRecord.distribution.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import numpy as np

if TYPE_CHECKING:
    from models.graph import ModelGraph

#: Default kernel catalog; must equal ``models.kernels.KERNELS`` (checked by the tests).
DEFAULT_KERNELS: tuple[str, ...] = ("mlp_small", "mlp_wide", "lowrank")

WAIT = 0


def num_actions(num_layers: int, num_kernels: int) -> int:
    """1 (WAIT) + num_layers * num_kernels."""
    return 1 + num_layers * num_kernels


def encode(layer: int, kernel: int, num_kernels: int) -> int:
    """Action index of GERMINATE(layer, kernel)."""
    if not 0 <= kernel < num_kernels or layer < 0:
        raise ValueError(f"bad action layer={layer} kernel={kernel} (K={num_kernels})")
    return 1 + layer * num_kernels + kernel


def decode(index: int, num_kernels: int) -> tuple[int, int] | None:
    """None for WAIT, else (layer, kernel)."""
    if index < 0:
        raise ValueError(f"negative action index {index}")
    if index == WAIT:
        return None
    return divmod(index - 1, num_kernels)


def legal_mask(graph: "ModelGraph", num_kernels: int, blocked_layers: Iterable[str] = ()) -> np.ndarray:
    """bool [1 + N * K]: WAIT always legal; layer i's K actions are legal iff the layer has
    a dormant seed and its name is not in ``blocked_layers``."""
    blocked = blocked_layers if isinstance(blocked_layers, (set, frozenset)) else set(blocked_layers)
    n = len(graph.layer_names)
    if blocked:
        ok = [d is not None and name not in blocked for name, d in zip(graph.layer_names, graph.dormant_seed)]
    else:
        ok = [d is not None for d in graph.dormant_seed]
    mask = np.empty(1 + n * num_kernels, dtype=bool)
    mask[0] = True
    mask[1:] = np.repeat(np.array(ok, dtype=bool), num_kernels)
    return mask
