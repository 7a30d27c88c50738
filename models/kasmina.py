"""KasminaLayer: a linear layer with dormant seeds that can grow kernels, and its health telemetry.

Seed lifecycle (one ``advance_epoch()`` call per finished epoch)::

    DORMANT --germinate--> GERMINATED --epoch--> TRAINING --training_epochs--> BLENDING
    BLENDING --blend_epochs--> FOSSILIZED          any state with a kernel except FOSSILIZED --cull--> CULLED

Output: ``y = act(linear(x) + sum_s alpha_s * kernel_s(x))``. The kernels correct the
pre-activation, so a seed can revive dead ReLU units. Alpha per state:

* GERMINATED, TRAINING: ``train_alpha`` (default 0.1). We chose a small alpha over a straight-through
  estimator: the forward pass then always shows the loss what the kernel really contributes, so the
  kernel cannot drift unchecked while invisible; a zero-initialised kernel still starts as a no-op.
* BLENDING: ramps linearly, ``max(train_alpha, k / blend_epochs)`` in the k-th blending epoch
  (k = 1..blend_epochs), reaching 1.
* FOSSILIZED: 1, and the kernel's parameters are frozen (``requires_grad=False``).
* DORMANT, CULLED: no kernel, no contribution. CULLED is terminal; the slot is not reused.

Health is measured on real tensors during training-mode forward passes, accumulated over a
reporting interval and reset by ``health()``; see ``health_score`` for the formula.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
import torch
from torch import nn

from models.kernels import KERNELS, build_kernel


class SeedState(str, Enum):
    """Lifecycle of one seed (the names are the Avro ``SeedState`` symbols)."""

    DORMANT = "DORMANT"
    GERMINATED = "GERMINATED"
    TRAINING = "TRAINING"
    BLENDING = "BLENDING"
    FOSSILIZED = "FOSSILIZED"
    CULLED = "CULLED"


ACTIVE_STATES = frozenset({SeedState.GERMINATED, SeedState.TRAINING, SeedState.BLENDING, SeedState.FOSSILIZED})


class SeedError(ValueError):
    """A seed operation that is not allowed; the message says why."""


@dataclass
class SeedSlot:
    """Pure lifecycle bookkeeping of one seed (shared with the simulated hosts)."""

    state: SeedState = SeedState.DORMANT
    kernel: str | None = None
    epochs_in_state: int = 0

    def alpha(self, train_alpha: float, blend_epochs: int) -> float:
        """Weight of the seed's kernel output in the layer output."""
        if self.state in (SeedState.GERMINATED, SeedState.TRAINING):
            return train_alpha
        if self.state is SeedState.BLENDING:
            return max(train_alpha, min(1.0, (self.epochs_in_state + 1) / blend_epochs))
        if self.state is SeedState.FOSSILIZED:
            return 1.0
        return 0.0

    def advance(self, training_epochs: int, blend_epochs: int) -> None:
        """Move one epoch forward in the lifecycle."""
        self.epochs_in_state += 1
        if self.state is SeedState.GERMINATED:
            self._enter(SeedState.TRAINING if training_epochs > 0 else SeedState.BLENDING)
        elif self.state is SeedState.TRAINING and self.epochs_in_state >= training_epochs:
            self._enter(SeedState.BLENDING)
        elif self.state is SeedState.BLENDING and self.epochs_in_state >= blend_epochs:
            self._enter(SeedState.FOSSILIZED)

    def _enter(self, state: SeedState) -> None:
        self.state = state
        self.epochs_in_state = 0


# Health score constants: activation variance below ~VARIANCE_SCALE counts as collapsed, gradient
# norms below ~GRAD_VANISH as vanished and above ~GRAD_EXPLODE as exploding, mean |correlation|
# above CORRELATION_FREE as redundant (1.0 correlation gives 0).
VARIANCE_SCALE = 1e-4
GRAD_VANISH = 1e-4
GRAD_EXPLODE = 100.0
CORRELATION_FREE = 0.5


def health_score(
    dead_neuron_ratio: float,
    activation_variance: float,
    avg_correlation: float,
    gradient_norm: float | None,
    error_count: int,
) -> float:
    """Health in [0, 1], the product of four factors in [0, 1] (any one problem pulls it down)::

        alive      = 1 - dead_neuron_ratio
        spread     = v / (v + VARIANCE_SCALE)                      v = activation_variance
        gradient   = g / (g + GRAD_VANISH) * GRAD_EXPLODE / (g + GRAD_EXPLODE)   (1 if g is None)
        diversity  = 1 - clip((|c| - CORRELATION_FREE) / (1 - CORRELATION_FREE), 0, 1)
        score      = alive * spread * gradient * diversity, and 0 if any non-finite value was seen
    """
    grad = math.nan if gradient_norm is None else gradient_norm
    return float(health_scores(*(np.array([v], dtype=np.float64) for v in (
        dead_neuron_ratio, activation_variance, avg_correlation, grad, error_count)))[0])


def health_scores(
    dead_neuron_ratio: np.ndarray,
    activation_variance: np.ndarray,
    avg_correlation: np.ndarray,
    gradient_norm: np.ndarray,
    error_count: np.ndarray,
) -> np.ndarray:
    """``health_score`` over arrays of equal shape (NaN gradient norm = not measured)."""
    alive = 1.0 - np.clip(dead_neuron_ratio, 0.0, 1.0)
    v = np.maximum(activation_variance, 0.0)
    spread = v / (v + VARIANCE_SCALE)
    measured = ~np.isnan(gradient_norm)
    g = np.where(measured, np.maximum(gradient_norm, 0.0), 1.0)
    gradient = np.where(measured, g / (g + GRAD_VANISH) * GRAD_EXPLODE / (g + GRAD_EXPLODE), 1.0)
    diversity = 1.0 - np.clip((np.abs(avg_correlation) - CORRELATION_FREE) / (1.0 - CORRELATION_FREE), 0.0, 1.0)
    score = alive * spread * gradient * diversity
    bad = (np.asarray(error_count) > 0) | ~np.isfinite(score)
    return np.where(bad, 0.0, np.clip(score, 0.0, 1.0))


class IntervalStats:
    """Activation and gradient statistics of one layer over one reporting interval.

    Per observed step: two reductions of the output and, in backward, a tensor hook that takes the
    norm of the gradient w.r.t. the pre-activation. Host syncs and finiteness checks wait for
    ``fold()`` (every ``FOLD_EVERY`` steps and at report time); a step with a non-finite activation
    or gradient counts as one error and is left out of the statistics.
    """

    CORRELATION_UNITS = 32  # units sampled for avg_correlation
    CORRELATION_ROWS = 128  # rows of the last observed batch kept for it
    FOLD_EVERY = 64

    __slots__ = ("forwards", "latency_s", "rows", "sum", "sumsq", "errors", "grad_sum", "grad_steps", "sample",
                 "_rows", "_sums", "_sumsqs", "_grads")

    def __init__(self) -> None:
        self.forwards = 0
        self.latency_s = 0.0
        self.rows = 0
        self.sum: torch.Tensor | None = None
        self.sumsq: torch.Tensor | None = None
        self.errors = 0
        self.grad_sum = 0.0
        self.grad_steps = 0
        self.sample: torch.Tensor | None = None
        self._rows: list[int] = []
        self._sums: list[torch.Tensor] = []
        self._sumsqs: list[torch.Tensor] = []
        self._grads: list[torch.Tensor] = []

    def observe(self, z: torch.Tensor, y: torch.Tensor) -> None:
        with torch.no_grad():
            a = y.detach().reshape(-1, y.shape[-1])
            self._rows.append(a.shape[0])
            self._sums.append(a.sum(0))
            self._sumsqs.append((a * a).sum(0))
            self.sample = a[-self.CORRELATION_ROWS :, : self.CORRELATION_UNITS]
        if z.requires_grad:
            z.register_hook(self._on_grad)
        if len(self._rows) >= self.FOLD_EVERY:
            self.fold()

    def _on_grad(self, grad: torch.Tensor) -> None:
        self._grads.append(torch.linalg.vector_norm(grad.detach()))

    def fold(self) -> None:
        with torch.no_grad():
            if self._rows:
                sums = torch.stack(self._sums).double()
                sumsq = torch.stack(self._sumsqs).double()
                ok = torch.isfinite(sums).all(1) & torch.isfinite(sumsq).all(1)
                rows = torch.tensor(self._rows, dtype=torch.float64, device=sums.device)
                self.errors += int((~ok).sum())
                self.rows += int(rows[ok].sum())
                self.sum = sums[ok].sum(0) + (0.0 if self.sum is None else self.sum)
                self.sumsq = sumsq[ok].sum(0) + (0.0 if self.sumsq is None else self.sumsq)
            if self._grads:
                norms = torch.stack(self._grads).double()
                ok = torch.isfinite(norms)
                self.errors += int((~ok).sum())
                self.grad_sum += float(norms[ok].sum())
                self.grad_steps += int(ok.sum())
        self._rows, self._sums, self._sumsqs, self._grads = [], [], [], []

    def correlation(self) -> float:
        """Mean |Pearson correlation| between distinct sampled units that vary (0 if < 2 do)."""
        sample = self.sample
        if sample is None:
            return 0.0
        sample = sample[torch.isfinite(sample).all(1)].double()
        if sample.shape[0] < 2:
            return 0.0
        keep = sample.std(0) > 1e-8
        n = int(keep.sum())
        if n < 2:
            return 0.0
        corr = torch.corrcoef(sample[:, keep].T).abs()
        value = float((corr.sum() - corr.diagonal().sum()) / (n * (n - 1)))
        return value if math.isfinite(value) else 0.0

    def report(self) -> dict[str, Any]:
        self.fold()
        if self.rows and self.sum is not None and self.sumsq is not None:
            mean = self.sum / self.rows
            variance = float((self.sumsq / self.rows - mean * mean).clamp_min(0.0).mean())
            dead = float((self.sumsq == 0).double().mean())  # never non-zero in the interval
            correlation = self.correlation()
            gradient = self.grad_sum / self.grad_steps if self.grad_steps else None
            score = health_score(dead, variance, correlation, gradient, self.errors)
        else:
            variance = dead = correlation = 0.0
            gradient = None
            score = 0.0 if self.errors else 1.0
        return {
            "health_score": score,
            "activation_variance": variance,
            "dead_neuron_ratio": dead,
            "avg_correlation": correlation,
            "gradient_norm": gradient or 0.0,
            "execution_latency_ms": 1000.0 * self.latency_s / self.forwards if self.forwards else 0.0,
            "error_count": self.errors,
        }


class KasminaLayer(nn.Module):
    """``act(Linear(in, out) + seeds)`` with ``num_seeds`` dormant seeds and health telemetry.

    Shapes: input ``(batch, in_features)``, output ``(batch, out_features)``.
    ``name`` is the stable layer name used on the wire (e.g. ``"layers.0"``). Health statistics
    are taken on every ``sample_every``-th training step (1 = all; the latency on every step).
    """

    def __init__(
        self,
        name: str,
        in_features: int,
        out_features: int,
        num_seeds: int = 4,
        activation: nn.Module | None = None,
        blend_epochs: int = 3,
        training_epochs: int = 1,
        train_alpha: float = 0.1,
        sample_every: int = 1,
    ) -> None:
        super().__init__()
        if blend_epochs < 1:
            raise ValueError("blend_epochs must be >= 1")
        self.name = name
        self.in_features = in_features
        self.out_features = out_features
        self.num_seeds = num_seeds
        self.blend_epochs = blend_epochs
        self.training_epochs = training_epochs
        self.train_alpha = train_alpha
        self.sample_every = max(1, sample_every)
        self.linear = nn.Linear(in_features, out_features)
        self.activation = activation if activation is not None else nn.Identity()
        self.kernels = nn.ModuleDict()  # str(seed_index) -> kernel, for seeds that hold one
        self.seeds = [SeedSlot() for _ in range(num_seeds)]
        self._interval = IntervalStats()

    # ----- seeds -------------------------------------------------------------------------------
    def _slot(self, seed_index: int) -> SeedSlot:
        if not 0 <= seed_index < self.num_seeds:
            raise SeedError(f"{self.name}: seed index {seed_index} is out of range 0..{self.num_seeds - 1}")
        return self.seeds[seed_index]

    def first_dormant(self) -> int | None:
        """Index of the first DORMANT seed, or None if none is left."""
        return next((i for i, s in enumerate(self.seeds) if s.state is SeedState.DORMANT), None)

    def germinate(self, seed_index: int, kernel: str) -> int:
        """Attach a new (no-op) kernel to a dormant seed; returns the parameters added."""
        slot = self._slot(seed_index)
        if slot.state is not SeedState.DORMANT:
            raise SeedError(f"{self.name}: seed {seed_index} is {slot.state.value}, not DORMANT")
        if kernel not in KERNELS:
            raise SeedError(f"{self.name}: unknown kernel {kernel!r}; the catalog is {', '.join(KERNELS)}")
        module = build_kernel(kernel, self.in_features, self.out_features)
        weight = self.linear.weight
        module.to(device=weight.device, dtype=weight.dtype).train(self.training)
        self.kernels[str(seed_index)] = module
        slot.state, slot.kernel, slot.epochs_in_state = SeedState.GERMINATED, kernel, 0
        return sum(p.numel() for p in module.parameters())

    def cull(self, seed_index: int) -> int:
        """Remove a seed's kernel for good; returns the (negative) parameter delta."""
        slot = self._slot(seed_index)
        if slot.state not in ACTIVE_STATES or slot.state is SeedState.FOSSILIZED:
            raise SeedError(f"{self.name}: seed {seed_index} is {slot.state.value}; only a growing seed can be culled")
        module = self.kernels.pop(str(seed_index))
        slot.state, slot.epochs_in_state = SeedState.CULLED, 0
        return -sum(p.numel() for p in module.parameters())

    def advance_epoch(self) -> None:
        """Move every seed one epoch along its lifecycle (call once per finished epoch)."""
        for index, slot in enumerate(self.seeds):
            before = slot.state
            slot.advance(self.training_epochs, self.blend_epochs)
            if slot.state is SeedState.FOSSILIZED and before is not SeedState.FOSSILIZED:
                self.kernels[str(index)].requires_grad_(False)

    def alpha(self, seed_index: int) -> float:
        """Current blending weight of a seed."""
        return self._slot(seed_index).alpha(self.train_alpha, self.blend_epochs)

    def seed_parameters(self, seed_index: int) -> list[nn.Parameter]:
        """Trainable parameters of a seed's kernel, for the trainer's optimizer."""
        self._slot(seed_index)
        module = self.kernels[str(seed_index)] if str(seed_index) in self.kernels else None
        if module is None:
            raise SeedError(f"{self.name}: seed {seed_index} holds no kernel")
        return [p for p in module.parameters() if p.requires_grad]

    def seed_states(self) -> list[str]:
        return [s.state.value for s in self.seeds]

    def active_seeds(self) -> int:
        return sum(s.state in ACTIVE_STATES for s in self.seeds)

    # ----- forward + telemetry -----------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        track = self.training
        start = time.perf_counter() if track else 0.0
        z = self.linear(x)
        for key, kernel in self.kernels.items():
            alpha = self.seeds[int(key)].alpha(self.train_alpha, self.blend_epochs)
            if alpha > 0.0:
                z = z + alpha * kernel(x)
        y = self.activation(z)
        if track:
            interval = self._interval
            interval.latency_s += time.perf_counter() - start
            if interval.forwards % self.sample_every == 0:
                interval.observe(z, y)
            interval.forwards += 1
        return y

    def health(self) -> dict[str, Any]:
        """Health over the interval since the last call (then starts a new interval).

        An interval without training forward passes reports zeros and a neutral score of 1.
        """
        interval, self._interval = self._interval, IntervalStats()
        return interval.report() | {
            "active_seeds": self.active_seeds(),
            "total_seeds": self.num_seeds,
            "seed_states": self.seed_states(),
        }

    def layer_spec(self) -> dict[str, Any]:
        """This layer as a ``LayerSpec`` record (parameter count includes attached kernels)."""
        return {
            "name": self.name,
            "layer_type": "KasminaLayer",
            "input_size": self.in_features,
            "output_size": self.out_features,
            "parameter_count": sum(p.numel() for p in self.parameters()),
            "num_seeds": self.num_seeds,
        }

    def extra_repr(self) -> str:
        return f"name={self.name!r}, in={self.in_features}, out={self.out_features}, seeds={self.seed_states()}"
