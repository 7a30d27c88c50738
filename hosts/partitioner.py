"""Kafka's default (Java) key partitioner: ``(murmur2(key) & 0x7fffffff) % partitions``.

It matches librdkafka's ``murmur2_random`` partitioner that ``make_producer`` configures, so a host
can read just the partition its commands land on.
"""

from __future__ import annotations

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2`` as an unsigned 32-bit value."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    tail = length & ~3
    for i in range(0, tail, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    extra = length & 3
    if extra == 3:
        h ^= data[tail + 2] << 16
    if extra >= 2:
        h ^= data[tail + 1] << 8
    if extra >= 1:
        h ^= data[tail]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def partition_for(key: bytes, num_partitions: int) -> int:
    """The partition a Java (or murmur2_random) producer picks for a non-empty ``key``."""
    if num_partitions < 1:
        raise ValueError("num_partitions must be >= 1")
    return (murmur2(key) & 0x7FFFFFFF) % num_partitions
