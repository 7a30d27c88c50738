"""DigitsTrainer: a real KasminaMLP trained on sklearn's digits (CPU, seeded, no Kafka)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from hosts.commands import Rejected
from models.host_net import KasminaMLP
from models.kasmina import SeedError, SeedState


@dataclass
class EpochResult:
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    steps: int
    seconds: float


class DigitsTrainer:
    """Adam on 80 % of the 1,797 digits images (inputs scaled to [0, 1]); validates on the rest."""

    def __init__(
        self,
        seed: int = 0,
        hidden: tuple[int, ...] = (64, 64, 32),
        batch_size: int = 32,
        lr: float = 3e-3,
        num_seeds: int = 4,
        health_sample_every: int = 4,
    ) -> None:
        torch.manual_seed(seed)
        x, y = load_digits(return_X_y=True)
        x_train, x_val, y_train, y_val = train_test_split(
            (x / 16.0).astype(np.float32), y, test_size=0.2, random_state=seed, stratify=y
        )
        self.x_train, self.y_train = torch.from_numpy(x_train), torch.from_numpy(y_train)
        self.x_val, self.y_val = torch.from_numpy(x_val), torch.from_numpy(y_val)
        self.batch_size = batch_size
        # Health statistics on every 4th step keep telemetry to ~15 % of this tiny network's step time.
        self.net = KasminaMLP(in_features=64, hidden=tuple(hidden), num_classes=10, num_seeds=num_seeds,
                              sample_every=health_sample_every)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.loss = nn.CrossEntropyLoss()
        self.generator = torch.Generator().manual_seed(seed)
        self.step = 0

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def train_epoch(
        self, after_step: Callable[[int], None] | None = None, timeout_s: float | None = None
    ) -> EpochResult:
        """One pass over the shuffled training set; ``after_step(step)`` runs after every step."""
        started = time.perf_counter()
        self.net.train()
        order = torch.randperm(len(self.x_train), generator=self.generator)
        total_loss, correct, seen, steps = 0.0, 0, 0, 0
        for begin in range(0, len(order), self.batch_size):
            idx = order[begin : begin + self.batch_size]
            xb, yb = self.x_train[idx], self.y_train[idx]
            self.optimizer.zero_grad(set_to_none=True)
            logits = self.net(xb)
            loss = self.loss(logits, yb)
            loss.backward()
            self.optimizer.step()
            self.step += 1
            steps += 1
            total_loss += loss.item() * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(idx)
            if after_step is not None:
                after_step(self.step)
            if timeout_s is not None and time.perf_counter() - started > timeout_s:
                break
        seconds = time.perf_counter() - started
        self.net.eval()
        with torch.no_grad():
            logits = self.net(self.x_val)
            val_loss = float(self.loss(logits, self.y_val))
            val_accuracy = float((logits.argmax(1) == self.y_val).float().mean())
        self.net.advance_epoch()
        return EpochResult(total_loss / max(seen, 1), correct / max(seen, 1), val_loss, val_accuracy, steps, seconds)

    def apply(self, command: dict[str, Any]) -> int:
        """Apply a validated GERMINATE or CULL; returns the parameter delta or raises Rejected."""
        layer = self.net.kasmina_layers.get(command.get("layer_name") or "")
        if layer is None:
            raise Rejected(f"unknown layer {command.get('layer_name')!r}")
        index = command.get("seed_index")
        try:
            if command["action"] == "GERMINATE":
                if index is None:
                    index = layer.first_dormant()
                    if index is None:
                        raise Rejected(f"{layer.name} has no dormant seed")
                delta = layer.germinate(index, command.get("kernel") or "")
                self.optimizer.add_param_group({"params": layer.seed_parameters(index)})
                return delta
            if index is None:
                growing = (SeedState.GERMINATED, SeedState.TRAINING, SeedState.BLENDING)
                index = next((i for i in reversed(range(layer.num_seeds)) if layer.seeds[i].state in growing), None)
                if index is None:
                    raise Rejected(f"{layer.name} has no growing seed to cull")
            return layer.cull(index)
        except SeedError as exc:
            raise Rejected(str(exc)) from None
