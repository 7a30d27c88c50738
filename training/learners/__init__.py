"""Offline learners over logged transitions, one module each: ``bc`` (behaviour cloning, the
baseline), ``awr`` (advantage-weighted regression) and ``lcbq`` (pessimistic fitted-Q policy
extraction: a bootstrap ensemble of critics, lower-confidence-bound advantages, distilled into one
policy). Each has a config dataclass and ``fit(data, cfg, progress) -> LearnerResult``; a new
learner is one new file plus a line here.
"""

from __future__ import annotations

from typing import Any, Callable

from training.dataset import TransitionDataset
from training.learners import awr, bc, lcbq
from training.learners.awr import AWRConfig
from training.learners.bc import BCConfig
from training.learners.lcbq import LCBQConfig
from training.learners.common import LearnerResult

#: name -> (config class, fit function)
LEARNERS: dict[str, tuple[type, Callable[..., LearnerResult]]] = {
    "bc": (BCConfig, bc.fit),
    "awr": (AWRConfig, awr.fit),
    "lcbq": (LCBQConfig, lcbq.fit),
}


def make_config(name: str, **values: Any) -> Any:
    """The learner's config with ``values`` set; keys the learner does not have are ignored, so
    one TrainConfig can feed any learner."""
    config_cls = _learner(name)[0]
    known = config_cls.__dataclass_fields__
    return config_cls(**{k: v for k, v in values.items() if k in known})


def fit(name: str, data: TransitionDataset, cfg: Any, progress: bool = False) -> LearnerResult:
    return _learner(name)[1](data, cfg, progress)


def _learner(name: str) -> tuple[type, Callable[..., LearnerResult]]:
    try:
        return LEARNERS[name]
    except KeyError:
        raise ValueError(f"unknown learner {name!r}; choose one of {sorted(LEARNERS)}") from None


__all__ = ["AWRConfig", "BCConfig", "LCBQConfig", "LEARNERS", "LearnerResult", "fit", "make_config"]
