"""The chaos scenarios on the session broker (tests/conftest.py ``kafka_bootstrap``), quick versions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tamiyo.chaos import run_scenario
from tamiyo.chaos.harness import ChaosEnv


@pytest.fixture(scope="session")
def chaos_env(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosEnv]:
    with ChaosEnv(tmp_path_factory.mktemp("chaos"), bootstrap=kafka_bootstrap, keep=True) as env:
        yield env


def run_quick(env: ChaosEnv, name: str) -> dict[str, Any]:
    return run_scenario(name, env, quick=True)


def explain(result: dict[str, Any]) -> str:
    """The failed checks, the error and the figures, for the assertion message."""
    shown = {k: v for k, v in result.items() if k not in ("samples", "traceback")}
    failed = [name for name, ok in (result.get("checks") or {}).items() if not ok]
    return f"failed checks {failed}; {result.get('traceback', '')}\n{json.dumps(shown, indent=1, default=str)[:6000]}"
