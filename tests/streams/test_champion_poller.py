"""ChampionPoller logic with a stand-in registry (pure logic; the real registry is tested on MLflow)."""

from __future__ import annotations

from pathlib import Path

from models.checkpoint import IncompatiblePolicyError
from streams.champion import ChampionPoller
from streams.policy_holder import PolicyHolder, ServingPolicy
from training.registry import ChampionRef


class FakeRegistry:
    def __init__(self) -> None:
        self.ref: ChampionRef | None = None
        self.down = False
        self.bad: set[str] = set()
        self.flaky: set[str] = set()  # the next download of these fails
        self.loads = 0

    def champion(self) -> ChampionRef | None:
        if self.down:
            raise ConnectionError("registry down")
        return self.ref

    def version_string(self, version: str) -> str:
        return f"p/v{version}"

    def load(self, version: str, destination: Path) -> object:
        self.loads += 1
        if version in self.flaky:
            self.flaky.discard(version)
            raise ConnectionError("artifact download interrupted")
        if version in self.bad:
            raise IncompatiblePolicyError("state_dict shapes do not match")
        return f"policy-{version}"


def test_poller_swaps_refuses_and_survives_outages(tmp_path: Path) -> None:
    registry = FakeRegistry()
    holder = PolicyHolder(ServingPolicy("heuristic", "heuristic-v1"))
    poller = ChampionPoller(registry, holder, 1.0, tmp_path)
    assert not poller.poll_once() and holder.serving.version == "heuristic-v1"  # no champion yet
    registry.ref = ChampionRef("1", None)
    assert poller.poll_once() and holder.serving == ServingPolicy("policy-1", "p/v1")
    assert not poller.poll_once() and registry.loads == 1  # unchanged alias: no reload
    registry.down = True
    assert not poller.poll_once() and poller.outage and holder.serving.version == "p/v1"
    registry.down = False
    registry.ref = ChampionRef("2", None)
    registry.bad.add("2")
    assert not poller.poll_once() and holder.serving.version == "p/v1" and not poller.outage
    assert not poller.poll_once() and registry.loads == 2  # a refused version is not retried
    registry.ref = ChampionRef("3", None)
    assert poller.poll_once() and holder.serving.version == "p/v3" and holder.swaps == 2


def test_a_failed_download_is_retried_not_refused(tmp_path: Path) -> None:
    registry = FakeRegistry()
    holder = PolicyHolder(ServingPolicy("heuristic", "heuristic-v1"))
    poller = ChampionPoller(registry, holder, 1.0, tmp_path)
    registry.ref = ChampionRef("4", None)
    registry.flaky.add("4")
    assert not poller.poll_once() and holder.serving.version == "heuristic-v1" and "4" not in poller.refused
    assert poller.poll_once() and holder.serving.version == "p/v4" and registry.loads == 2
