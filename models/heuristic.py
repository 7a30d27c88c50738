"""The design notes' threshold rule as a policy over the same action space as the GNN."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from models.graph import FEATURE_INDEX
from models.policy import GraphBatch, split_padded


class ThresholdHeuristic:
    """Adapt the least healthy layer with ``kernel`` if its health is below the threshold.

    Among layers that have data (has_data=1) and whose GERMINATE(layer, kernel) action is
    legal under the given masks, take the one with the lowest window-mean health (ties: the
    first in topology order); if that health < ``health_threshold`` choose it, else WAIT.
    Layers that are blocked or have no dormant seed are skipped, so a sick but blocked
    layer does not hide the next-sickest one.

    As logits: with ``margin=None`` (default) the chosen action has logit 0 and every other
    action -inf, i.e. an exact one-hot distribution (propensity 1). With a float margin the
    chosen action gets ``margin`` and the other legal actions 0 (a soft version).
    Value estimates are 0.
    """

    version: str = "heuristic-v1"

    def __init__(
        self,
        health_threshold: float = 0.3,
        num_kernels: int = 3,
        kernel: int = 0,
        margin: float | None = None,
    ):
        if not 0 <= kernel < num_kernels:
            raise ValueError(f"kernel {kernel} not in [0, {num_kernels})")
        self.health_threshold = health_threshold
        self._num_kernels = num_kernels
        self.kernel = kernel
        self.margin = margin
        self.version = ThresholdHeuristic.version

    @property
    def num_kernels(self) -> int:
        return self._num_kernels

    def choices(self, batch: GraphBatch, masks: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Chosen action index per graph, int64 [G] (0 = WAIT), and the legal mask bool [G, A_max]."""
        k = self._num_kernels
        lay = batch.layout(k)
        legal = lay.padded_mask(masks).numpy()
        g = batch.num_graphs
        choice = np.zeros(g, dtype=np.int64)
        if len(batch.batch_np) == 0:
            return choice, legal
        x = batch.x_np
        legal_k = legal.reshape(-1)[lay.node_flat.reshape(-1, k)[:, self.kernel]]
        candidate = legal_k & (x[:, FEATURE_INDEX["has_data"]] > 0.5)
        score = np.where(candidate, x[:, FEATURE_INDEX["health_mean"]].astype(np.float64), np.inf)
        order = np.lexsort((score, batch.batch_np))  # by graph, then health; stable on ties
        nonempty = np.diff(batch.ptr) > 0
        best = order[batch.ptr[:-1][nonempty]]  # lowest-score node of each non-empty graph
        adapt = score[best] < self.health_threshold
        local = best - batch.ptr[:-1][nonempty]
        choice[np.flatnonzero(nonempty)[adapt]] = 1 + local[adapt] * k + self.kernel
        return choice, legal

    def padded_logits(self, batch: GraphBatch, masks: Sequence[np.ndarray]) -> np.ndarray:
        """float64 [G, A_max] logits; -inf on illegal actions and padding."""
        choice, legal = self.choices(batch, masks)
        rows = np.arange(batch.num_graphs)
        if self.margin is None:
            logits = np.full(legal.shape, -np.inf)
            logits[rows, choice] = 0.0
        else:
            logits = np.where(legal, 0.0, -np.inf)
            logits[rows, choice] = float(self.margin)
        return logits

    def padded_distributions(
        self, batch: GraphBatch, masks: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(probs float64 [G, A_max], num_actions int64 [G], values float64 [G] = 0)."""
        logits = self.padded_logits(batch, masks)
        if logits.size:
            logits = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        probs = e / e.sum(axis=1, keepdims=True) if e.size else e
        return probs, batch.layout(self._num_kernels).counts, np.zeros(batch.num_graphs)

    def distributions(self, batch: GraphBatch, masks: Sequence[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
        """Per-graph probabilities (float64 [1 + N_g * K]) and values [G]."""
        probs, counts, values = self.padded_distributions(batch, masks)
        return split_padded(probs, counts), values
