"""KasminaMLP: the real host network (sklearn digits: 64 inputs -> hidden -> 10 classes)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from models.kasmina import KasminaLayer


class KasminaMLP(nn.Module):
    """An MLP whose every linear layer is a KasminaLayer named ``layers.<i>`` (the last has no ReLU).

    Shapes: input ``(batch, in_features)``, output logits ``(batch, num_classes)``.
    """

    def __init__(
        self,
        in_features: int = 64,
        hidden: tuple[int, ...] = (64, 64, 32),
        num_classes: int = 10,
        num_seeds: int = 4,
        **layer_options: Any,
    ) -> None:
        super().__init__()
        sizes = [in_features, *hidden, num_classes]
        last = len(sizes) - 2
        self.layers = nn.ModuleList(
            KasminaLayer(
                f"layers.{i}",
                sizes[i],
                sizes[i + 1],
                num_seeds=num_seeds,
                activation=None if i == last else nn.ReLU(),
                **layer_options,
            )
            for i in range(len(sizes) - 1)
        )

    @property
    def kasmina_layers(self) -> dict[str, KasminaLayer]:
        """Layers by stable name, in data-flow order."""
        return {layer.name: layer for layer in self.layers}  # type: ignore[misc]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def advance_epoch(self) -> None:
        for layer in self.layers:
            layer.advance_epoch()  # type: ignore[operator]

    def topology(self) -> dict[str, Any]:
        """``layers`` (LayerSpec records) and ``edges`` (consecutive layers) of a ModelTopology."""
        specs = [layer.layer_spec() for layer in self.layers]  # type: ignore[operator]
        edges = [{"source": a["name"], "target": b["name"]} for a, b in zip(specs, specs[1:])]
        return {"layers": specs, "edges": edges}
