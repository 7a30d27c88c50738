"""The recovery watchdog's decision rule (pure logic; the real stall is in test_recovery_watch_kafka.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from streams import recovery_watch
from streams.factory import create_app
from streams.metrics import WorkerMetrics
from streams.recovery_watch import EXIT, OK, REJOIN, RecoveryWatch, describe, sample, start
from tamiyo.config import Settings


def test_no_recovery_is_never_a_stall() -> None:
    watch = RecoveryWatch(stall_s=10)
    assert [watch.check(False, None, 0, now=t) for t in (0, 100, 1000)] == [OK, OK, OK]


def test_a_recovery_that_moves_is_left_alone_however_long_it_takes() -> None:
    watch = RecoveryWatch(stall_s=10)
    assert [watch.check(True, 1.0, n, now=9.0 * n) for n in range(50)] == [OK] * 50


def test_no_progress_for_stall_s_rejoins_then_exits_after_max_rejoins() -> None:
    watch = RecoveryWatch(stall_s=10, max_rejoins=2)
    assert watch.check(True, 1.0, 5, now=0) == OK
    assert watch.check(True, 1.0, 5, now=9.9) == OK
    assert watch.check(True, 1.0, 5, now=10.0) == REJOIN and watch.rejoins == 1
    assert watch.check(True, 1.0, 5, now=15.0) == OK  # a rejoin gets stall_s of its own
    # The rejoin restarted recovery (a new start), which does not move either.
    assert watch.check(True, 2.0, 5, now=21.0) == OK
    assert watch.check(True, 2.0, 5, now=31.0) == REJOIN and watch.rejoins == 2
    assert watch.check(True, 3.0, 5, now=32.0) == OK
    assert watch.check(True, 3.0, 5, now=42.0) == EXIT


def test_progress_within_a_recovery_forgives_earlier_rejoins() -> None:
    watch = RecoveryWatch(stall_s=10, max_rejoins=1)
    watch.check(True, 1.0, 5, now=0)
    assert watch.check(True, 1.0, 5, now=10) == REJOIN
    assert watch.check(True, 2.0, 0, now=11) == OK  # restarted
    assert watch.check(True, 2.0, 7, now=12) == OK and watch.rejoins == 0  # and moving
    assert watch.check(True, 2.0, 7, now=22) == REJOIN  # a later stall gets its rejoin again


def test_the_end_of_recovery_resets_the_watch() -> None:
    watch = RecoveryWatch(stall_s=10, max_rejoins=1)
    watch.check(True, 1.0, 5, now=0)
    assert watch.check(True, 1.0, 5, now=10) == REJOIN
    assert watch.check(False, None, 0, now=11) == OK and watch.rejoins == 0
    watch.check(True, 5.0, 0, now=12)
    assert watch.check(True, 5.0, 0, now=22) == REJOIN


def test_stall_s_zero_disables_the_watch() -> None:
    watch = RecoveryWatch(stall_s=0)
    assert [watch.check(True, 1.0, 5, now=t) for t in (0, 1e6, 2e6)] == [OK, OK, OK]


def test_sample_reads_fausts_recovery_state() -> None:
    class Recovery:
        in_recovery = True
        _recovery_started_at = 12.5
        active_offsets = {"a": 4, "b": None, "c": -1}

    assert sample(Recovery()) == (True, 12.5, 3)


def test_the_watchdog_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAMIYO_RECOVERY_STALL_SECONDS", "12.5")
    monkeypatch.setenv("TAMIYO_RECOVERY_MAX_REJOINS", "0")
    settings = Settings.from_env()
    assert (settings.recovery_stall_seconds, settings.recovery_max_rejoins) == (12.5, 0)
    assert (Settings().recovery_stall_seconds, Settings().recovery_max_rejoins) == (60.0, 2)  # documented defaults
    with pytest.raises(ValueError, match="TAMIYO_RECOVERY_MAX_REJOINS"):
        Settings(recovery_max_rejoins=-1).validate()
    assert start(object(), stall_s=0) is None  # disabled: no thread


def test_the_watchdog_thread_rejoins_counts_and_finally_exits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The thread's orchestration on a stand-in recovery (the real stall: test_recovery_watch_kafka.py)."""
    recovery = SimpleNamespace(in_recovery=True, _recovery_started_at=1.0, active_offsets={"tp": 3})
    app = SimpleNamespace(tables=SimpleNamespace(recovery=recovery))
    rejoins, exits = [], []
    monkeypatch.setattr(recovery_watch, "request_rejoin", lambda a: rejoins.append(a))
    monkeypatch.setattr(recovery_watch, "describe", lambda a: "state")

    def fake_exit(code: int) -> None:
        exits.append(code)

    monkeypatch.setattr(recovery_watch.os, "_exit", fake_exit)
    metrics = WorkerMetrics()
    dog = recovery_watch.RecoveryWatchdog(app, RecoveryWatch(stall_s=10, max_rejoins=1), metrics=metrics)
    assert [dog.tick(t) for t in (0.0, 5.0, 10.0)] == [OK, OK, REJOIN]
    assert rejoins == [app] and metrics.recovery_rejoins._value.get() == 1
    recovery.active_offsets["tp"] = 4  # progress: the same recovery moved on
    assert dog.tick(12.0) == OK and dog.watch.rejoins == 0
    assert dog.tick(22.0) == REJOIN and not exits
    dog.tick(32.0)  # no progress after its one rejoin: the process exits (it does not return)
    assert exits == [75] and len(rejoins) == 2 and metrics.recovery_rejoins._value.get() == 2

    # As a thread: it samples every interval until stopped, and a failing sample does not end it.
    calls = []
    dog = recovery_watch.RecoveryWatchdog(app, RecoveryWatch(stall_s=10), interval_s=0.01)
    monkeypatch.setattr(dog, "tick", lambda now: calls.append(now) or 1 / 0)
    dog.start()
    while len(calls) < 3:
        dog.stopped.wait(0.01)
    dog.stopped.set()
    dog.join(5)
    assert not dog.is_alive() and len(calls) >= 3


def test_describe_and_sample_read_a_real_faust_app(tmp_path: Path) -> None:
    """The attributes the watchdog reads exist on Faust's own objects (an app built, not started)."""
    app, _ = create_app(Settings.from_env(bootstrap_servers="127.0.0.1:1", data_dir=tmp_path))
    assert sample(app.tables.recovery) == (False, None, 0)
    state = describe(app)
    assert state.startswith("remaining={} flow_active=") and "seek_guard" not in state  # no consumer yet
