"""The recovery watchdog's decision rule (pure logic; the real stall is in test_recovery_watch_kafka.py)."""

from __future__ import annotations

import pytest

from streams.recovery_watch import EXIT, OK, REJOIN, RecoveryWatch, sample, start
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
