"""The Java-compatible key partitioner (vectors from Kafka's UtilsTest)."""

from __future__ import annotations

import pytest

from hosts.partitioner import murmur2, partition_for


@pytest.mark.parametrize(
    ("key", "signed"),
    [
        ("21", -973932308),
        ("foobar", -790332482),
        ("a-little-bit-long-string", -985981536),
        ("a-little-bit-longer-string", -1486304829),
        ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        ("abc", 479470107),
    ],
)
def test_murmur2_matches_kafka(key: str, signed: int) -> None:
    assert murmur2(key.encode()) == signed & 0xFFFFFFFF


def test_partition_for_is_positive_modulo() -> None:
    assert partition_for(b"foobar", 7) == (-790332482 & 0x7FFFFFFF) % 7
    assert {partition_for(f"sim-0-{i:04d}".encode(), 4) for i in range(100)} == {0, 1, 2, 3}
    with pytest.raises(ValueError):
        partition_for(b"k", 0)
