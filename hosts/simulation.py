"""SimulatedModel: a cheap, seeded stand-in for a training run, in which adaptations matter.

Dynamics (all constants are fields of ``SimulationParams``):

* A model has 8-16 ``KasminaLayer``-like layers (``layers.0`` ...), each with 4 seeds. Each layer
  has a hidden condition: healthy, or a *deficit* of type k in {0, 1, 2} with a severity in (0, 1].
  At the start of a run each layer has a deficit with probability 0.25; during the run a healthy
  layer develops one with probability 0.01 per epoch. Deficit type k is cured by ``KERNELS[k]``.
* Telemetry shows deficits noisily, each type through its own signal, scaled by the severity:
  type 0 raises ``dead_neuron_ratio`` (0.05 -> ~0.75), type 1 raises ``avg_correlation``
  (0.3 -> ~0.9), type 2 shrinks ``gradient_norm`` (x 10^-3.5). ``health_score`` is computed from
  those with ``models.kasmina.health_score``: about 0.9 healthy, below 0.3 at full severity.
* Validation loss starts at 2.3 and closes 35 % of its gap to a floor each epoch (plus N(0, 0.01)
  noise): ``floor = 0.15 + 0.2 * sum(severity) + 0.08 * (adaptations of layers with no deficit)``.
* GERMINATE with the matching kernel sets the layer's severity to 0; a wrong kernel halves it (a
  severity below 0.1 is then cleared); on a layer with no deficit it adds 0.08 to the floor. Every
  kernel also adds its real parameter count. CULL of a growing seed undoes its effect.
* Runs last ``epochs_per_run`` epochs; the last EpochOutcome has ``final=True`` and the next call
  starts a new run (new ``run_id``, new layers and conditions). Train loss is 0.9 x val loss;
  accuracies are ``exp(-loss)``.

Consequences the learning loop relies on (checked by tests/hosts/test_simulation.py): curing
deficits with the matching kernel beats "kernel 0 on the lowest-health layer when health < 0.3",
which beats never adapting, which beats adapting random layers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from hosts.commands import CommandLedger, Rejected, apply_once, check_command
from models.kasmina import ACTIVE_STATES, SeedSlot, SeedState, health_scores
from models.kernels import KERNELS, kernel_parameter_count

DEFICIT_TYPES = len(KERNELS)  # deficit k is cured by KERNELS[k]
STEPS_PER_SIGNAL = 50
GROWING = frozenset({SeedState.GERMINATED, SeedState.TRAINING, SeedState.BLENDING})


@dataclass(frozen=True)
class SimulationParams:
    """Constants of the simulated dynamics (documented in the module docstring)."""

    min_layers: int = 8
    max_layers: int = 16
    widths: tuple[int, ...] = (32, 64, 96, 128)
    input_size: int = 64
    num_classes: int = 10
    num_seeds: int = 4
    initial_deficit_prob: float = 0.25
    new_deficit_prob: float = 0.01
    initial_loss: float = 2.3
    base_floor: float = 0.15
    deficit_cost: float = 0.2
    healthy_cost: float = 0.08
    wrong_kernel_factor: float = 0.5
    clear_below: float = 0.1
    convergence: float = 0.35
    loss_noise: float = 0.01
    error_prob: float = 0.0005
    training_epochs: int = 1
    blend_epochs: int = 3


@dataclass
class _Layer:
    name: str
    input_size: int
    output_size: int
    deficit: int  # -1 when healthy
    severity: float
    grad_base: float
    var_base: float
    seeds: list[SeedSlot]
    undo: dict[int, tuple[str, float]]  # seed index -> ("severity", old value) or ("cost", amount)
    cost: float = 0.0

    @property
    def base_parameters(self) -> int:
        return self.input_size * self.output_size + self.output_size

    def parameter_count(self) -> int:
        extra = sum(
            kernel_parameter_count(s.kernel, self.input_size, self.output_size)
            for s in self.seeds
            if s.kernel is not None and s.state in ACTIVE_STATES
        )
        return self.base_parameters + extra


class SimulatedModel:
    """One simulated training run after another for ``model_id``; pure Python + numpy, no Kafka."""

    def __init__(
        self,
        model_id: str,
        rng: np.random.Generator,
        num_layers: int | None = None,
        epochs_per_run: int = 20,
        signals_per_epoch: int = 2,
        params: SimulationParams = SimulationParams(),
        run_salt: str = "",
        clock: Callable[[], float] = time.time,
        ledger_capacity: int = 256,
    ) -> None:
        if epochs_per_run < 1:
            raise ValueError("epochs_per_run must be >= 1")
        self.model_id = model_id
        self.rng = rng
        self.num_layers = num_layers
        self.epochs_per_run = epochs_per_run
        self.signals_per_epoch = signals_per_epoch
        self.params = params
        self.run_salt = run_salt
        self.clock = clock
        self.ledger = CommandLedger(ledger_capacity)
        self.runs_started = 0
        self.run_id = ""
        self.run_start_ms = 0
        self.epoch = 0  # the epoch being trained (= epochs completed in this run)
        self.step = 0
        self.reported_step: int | None = None  # the step of this epoch's last health report
        self.val_loss = params.initial_loss
        self.layers: list[_Layer] = []
        self._by_name: dict[str, _Layer] = {}
        self._growing: list[SeedSlot] = []
        self._array_cache: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._view_cache: list[tuple[str, int, int, int, list[str]]] | None = None
        self._pending_run = True

    # ----- run lifecycle -----------------------------------------------------------------------
    @property
    def run_over(self) -> bool:
        """True before the first run and after a final epoch: the next call starts a new run."""
        return self._pending_run

    def _ensure_run(self) -> None:
        if self._pending_run:
            self._new_run()

    def _new_run(self) -> None:
        p, rng = self.params, self.rng
        self.runs_started += 1
        suffix = f"-{self.run_salt}" if self.run_salt else ""
        self.run_id = f"{self.model_id}-run{self.runs_started:04d}{suffix}"
        self.run_start_ms = self._now_ms()
        self.epoch = 0
        self.step = 0
        self.val_loss = p.initial_loss
        n = self.num_layers or int(rng.integers(p.min_layers, p.max_layers + 1))
        sizes = [p.input_size, *(int(w) for w in rng.choice(p.widths, size=n - 1)), p.num_classes]
        sick = rng.random(n) < p.initial_deficit_prob
        kinds = rng.integers(0, DEFICIT_TYPES, size=n)
        grads = np.exp(rng.normal(math.log(0.05), 0.5, size=n))
        variances = np.exp(rng.normal(math.log(0.3), 0.7, size=n))
        self.layers = [
            _Layer(
                name=f"layers.{i}",
                input_size=sizes[i],
                output_size=sizes[i + 1],
                deficit=int(kinds[i]) if sick[i] else -1,
                severity=1.0 if sick[i] else 0.0,
                grad_base=float(grads[i]),
                var_base=float(variances[i]),
                seeds=[SeedSlot() for _ in range(p.num_seeds)],
                undo={},
            )
            for i in range(n)
        ]
        self._by_name = {layer.name: layer for layer in self.layers}
        self._growing = []
        self._changed()
        self.ledger.new_run(self.run_id)
        self._pending_run = False

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    # ----- ground truth (tests, benchmarks) ----------------------------------------------------
    @property
    def deficits(self) -> dict[str, int | None]:
        """Hidden condition per layer: the deficit type, or None when healthy."""
        self._ensure_run()
        return {l.name: (l.deficit if l.severity > 0 else None) for l in self.layers}

    @property
    def severities(self) -> dict[str, float]:
        self._ensure_run()
        return {l.name: l.severity for l in self.layers}

    def floor(self) -> float:
        """The loss the run converges to if nothing changes."""
        p = self.params
        return p.base_floor + p.deficit_cost * sum(l.severity for l in self.layers) + sum(l.cost for l in self.layers)

    def parameter_count(self) -> int:
        return sum(params for _, params, _, _, _ in self._seed_view())

    # ----- wire records ------------------------------------------------------------------------
    def topology(self) -> dict[str, Any]:
        """The current run's ModelTopology record."""
        self._ensure_run()
        layers = [
            {
                "name": l.name,
                "layer_type": "KasminaLayer",
                "input_size": l.input_size,
                "output_size": l.output_size,
                "parameter_count": l.parameter_count(),
                "num_seeds": len(l.seeds),
            }
            for l in self.layers
        ]
        edges = [{"source": a.name, "target": b.name} for a, b in zip(self.layers, self.layers[1:])]
        return {"model_id": self.model_id, "run_id": self.run_id, "timestamp_ms": self._now_ms(),
                "layers": layers, "edges": edges}

    def health_signals(self) -> list[dict[str, Any]]:
        """One HealthSignal per layer for the interval that just ended."""
        self._ensure_run()
        rng, n = self.rng, len(self.layers)
        severity, kind, grad_base, var_base = self._arrays
        s0, s1, s2 = ((kind == k) * severity for k in range(DEFICIT_TYPES))
        noise = rng.normal(size=(5, n))
        dead = np.clip(0.05 + 0.70 * s0 + 0.03 * noise[0], 0.0, 1.0)
        corr = np.clip(0.30 + 0.60 * s1 + 0.05 * noise[1], -1.0, 1.0)
        grad = grad_base * 10.0 ** (-3.5 * s2) * np.exp(0.25 * noise[2])
        var = var_base * np.exp(0.2 * noise[3])
        errors = (rng.random(n) < self.params.error_prob).astype(np.int64)
        score = health_scores(dead, var, corr, grad, errors)
        self.step += STEPS_PER_SIGNAL
        self.reported_step = self.step
        now = self._now_ms()
        columns = zip(self._seed_view(), score.tolist(), var.tolist(), dead.tolist(), corr.tolist(), grad.tolist(),
                      np.exp(0.1 * noise[4]).tolist(), errors.tolist())
        return [
            {
                "model_id": self.model_id, "run_id": self.run_id, "layer_name": name, "epoch": self.epoch,
                "step": self.step, "timestamp_ms": now, "health_score": h, "activation_variance": v,
                "dead_neuron_ratio": d, "avg_correlation": c, "gradient_norm": g,
                "execution_latency_ms": params * 2e-5 * jitter, "error_count": e, "active_seeds": active,
                "total_seeds": total, "seed_states": states,
            }
            for (name, params, active, total, states), h, v, d, c, g, jitter, e in columns
        ]

    @property
    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if self._array_cache is None:
            self._array_cache = (
                np.array([l.severity for l in self.layers]),
                np.array([l.deficit for l in self.layers]),
                np.array([l.grad_base for l in self.layers]),
                np.array([l.var_base for l in self.layers]),
            )
        return self._array_cache

    def _seed_view(self) -> list[tuple[str, int, int, int, list[str]]]:
        """Per layer: name, parameters, active seeds, total seeds, seed states; cached."""
        if self._view_cache is None:
            self._view_cache = [
                (l.name, l.parameter_count(), sum(s.state in ACTIVE_STATES for s in l.seeds), len(l.seeds),
                 [s.state.value for s in l.seeds])
                for l in self.layers
            ]
        return self._view_cache

    def _changed(self) -> None:
        self._array_cache = None
        self._view_cache = None

    def end_epoch(self) -> dict[str, Any]:
        """Finish the current epoch: move seeds and loss, maybe develop deficits; its EpochOutcome."""
        self._ensure_run()
        p, rng = self.params, self.rng
        if self._growing:
            for slot in self._growing:
                slot.advance(p.training_epochs, p.blend_epochs)
            self._growing = [slot for slot in self._growing if slot.state in GROWING]
            self._view_cache = None
        floor = self.floor()
        self.val_loss = max(floor + (self.val_loss - floor) * (1.0 - p.convergence) + p.loss_noise * rng.normal(), 0.01)
        fresh = rng.random(len(self.layers)) < p.new_deficit_prob
        kinds = rng.integers(0, DEFICIT_TYPES, size=len(self.layers))
        for l, new, k in zip(self.layers, fresh, kinds):
            if new and l.severity == 0.0:
                l.deficit, l.severity = int(k), 1.0
                self._array_cache = None
        final = self.epoch >= self.epochs_per_run - 1
        train_loss = 0.9 * self.val_loss
        outcome = {
            "model_id": self.model_id,
            "run_id": self.run_id,
            "epoch": self.epoch,
            "timestamp_ms": self._now_ms(),
            "train_loss": train_loss,
            "val_loss": self.val_loss,
            "train_accuracy": math.exp(-train_loss),
            "val_accuracy": math.exp(-self.val_loss),
            "parameter_count": self.parameter_count(),
            "final": final,
            "last_report_step": self.reported_step,
        }
        self.epoch += 1
        self.reported_step = None
        self._pending_run = final
        return outcome

    # ----- commands ----------------------------------------------------------------------------
    def apply(self, command: dict[str, Any]) -> dict[str, Any]:
        """Apply an AdaptationCommand at most once (by decision_id); returns its CommandOutcome."""
        self._ensure_run()
        return apply_once(self.ledger, command, self._execute, self.model_id, self.run_id, self.epoch, self._now_ms())

    def _execute(self, command: dict[str, Any]) -> int:
        check_command(command, self.model_id, self.run_id, self.run_start_ms, self.epoch)
        layer = self._by_name.get(command.get("layer_name") or "")
        if layer is None:
            raise Rejected(f"unknown layer {command.get('layer_name')!r}")
        index = command.get("seed_index")
        if command["action"] == "GERMINATE":
            return self._germinate(layer, index, command.get("kernel"))
        return self._cull(layer, index)

    def _germinate(self, layer: _Layer, index: int | None, kernel: str | None) -> int:
        p = self.params
        if kernel not in KERNELS:
            raise Rejected(f"unknown kernel {kernel!r}; the catalog is {', '.join(KERNELS)}")
        if index is None:
            index = next((i for i, s in enumerate(layer.seeds) if s.state is SeedState.DORMANT), None)
            if index is None:
                raise Rejected(f"{layer.name} has no dormant seed")
        elif not 0 <= index < len(layer.seeds):
            raise Rejected(f"{layer.name}: seed index {index} is out of range 0..{len(layer.seeds) - 1}")
        slot = layer.seeds[index]
        if slot.state is not SeedState.DORMANT:
            raise Rejected(f"{layer.name}: seed {index} is {slot.state.value}, not DORMANT")
        slot.state, slot.kernel, slot.epochs_in_state = SeedState.GERMINATED, kernel, 0
        self._growing.append(slot)
        self._changed()
        if layer.severity > 0.0:
            layer.undo[index] = ("severity", layer.severity)
            matching = KERNELS.index(kernel) == layer.deficit
            layer.severity = 0.0 if matching else layer.severity * p.wrong_kernel_factor
            if layer.severity < p.clear_below:
                layer.severity = 0.0
        else:
            layer.undo[index] = ("cost", p.healthy_cost)
            layer.cost += p.healthy_cost
        return kernel_parameter_count(kernel, layer.input_size, layer.output_size)

    def _cull(self, layer: _Layer, index: int | None) -> int:
        if index is None:
            index = next((i for i in reversed(range(len(layer.seeds))) if layer.seeds[i].state in GROWING), None)
            if index is None:
                raise Rejected(f"{layer.name} has no growing seed to cull")
        elif not 0 <= index < len(layer.seeds):
            raise Rejected(f"{layer.name}: seed index {index} is out of range 0..{len(layer.seeds) - 1}")
        slot = layer.seeds[index]
        if slot.state not in GROWING:
            raise Rejected(f"{layer.name}: seed {index} is {slot.state.value}; only a growing seed can be culled")
        kind, value = layer.undo.pop(index)
        if kind == "cost":
            layer.cost -= value
        elif layer.severity < value:
            layer.severity = value
        slot.state, slot.epochs_in_state = SeedState.CULLED, 0
        self._growing = [s for s in self._growing if s is not slot]
        self._changed()
        assert slot.kernel is not None
        return -kernel_parameter_count(slot.kernel, layer.input_size, layer.output_size)
