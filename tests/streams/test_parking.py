"""Parking: bounded, expiring, per-model holding of messages that cannot be handled yet."""

from __future__ import annotations

from streams.parking import Parking


def test_park_release_expire_and_membership() -> None:
    parking: Parking[str] = Parking(ttl_s=10.0, capacity=3)
    assert parking.park("a", "a1", now=0.0) and parking.park("a", "a2", now=5.0) and parking.park("b", "b1", now=1.0)
    assert not parking.park("c", "c1", now=1.0)  # full: the caller decides what to do with it
    assert "a" in parking and "c" not in parking and len(parking) == 3
    assert parking.expired(now=10.5) == ["a1"]  # deadlines: a1 10, a2 15, b1 11
    assert "a" in parking and len(parking) == 2
    assert parking.release("a") == [(15.0, "a2")] and "a" not in parking and parking.release("a") == []
    assert parking.expired(now=11.0) == ["b1"] and len(parking) == 0 and parking.models() == []
