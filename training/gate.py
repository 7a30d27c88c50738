"""The promotion gate: promote a challenger only when it is confidently better than the champion."""

from __future__ import annotations

import math
from dataclasses import dataclass

from training.ope import OPEReport


@dataclass(frozen=True)
class GateConfig:
    estimator: str = "dr"
    min_effective_sample_size: float = 50.0
    margin: float = 0.0
    max_unsupported_mass: float = 0.05


@dataclass(frozen=True)
class GateVerdict:
    promote: bool
    reason: str
    challenger_low: float
    champion_value: float


def judge(challenger: OPEReport, champion: OPEReport, cfg: GateConfig) -> GateVerdict:
    """Promote when the challenger's lower bound beats the champion's estimate on the same data
    (plus ``margin``), its effective sample size is at least the floor, and at most
    ``max_unsupported_mass`` of its probability lies on actions the logged behaviour never took."""
    # Both sides must be judged by the same estimator; DR needs a fitted Q, so fall back to SNIPS
    # when either report lacks the configured one.
    name = cfg.estimator if cfg.estimator in challenger.estimates and cfg.estimator in champion.estimates else "snips"
    ours = challenger.estimates[name]
    theirs = champion.estimates[name]
    # NaN compares False with everything: without this a NaN estimate would pass the comparison below.
    broken = [label for label, x in (("challenger lower bound", ours.low), ("champion value", theirs.value),
                                     ("challenger effective sample size", challenger.effective_sample_size))
              if not math.isfinite(x)]
    if broken:
        return GateVerdict(False, f"{name}: {', '.join(broken)} not finite", ours.low, theirs.value)
    if challenger.unsupported_mass > cfg.max_unsupported_mass:
        return GateVerdict(False, f"the challenger puts {challenger.unsupported_mass:.3f} of its probability on "
                                  f"actions the logged behaviour never took (> {cfg.max_unsupported_mass}): the data "
                                  "cannot evaluate it; collect with exploration (TAMIYO_EPSILON > 0)",
                           ours.low, theirs.value)
    if challenger.effective_sample_size < cfg.min_effective_sample_size:
        return GateVerdict(False, f"effective sample size {challenger.effective_sample_size:.1f} < floor "
                                  f"{cfg.min_effective_sample_size:.1f}", ours.low, theirs.value)
    if ours.low <= theirs.value + cfg.margin:
        return GateVerdict(False, f"{name} lower bound {ours.low:.4f} does not beat champion "
                                  f"{theirs.value:.4f} + margin {cfg.margin}", ours.low, theirs.value)
    return GateVerdict(True, f"{name} lower bound {ours.low:.4f} > champion {theirs.value:.4f} + margin "
                             f"{cfg.margin}; ESS {challenger.effective_sample_size:.1f}", ours.low, theirs.value)
