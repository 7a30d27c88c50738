"""streams.kafka.reader on the real broker: exact ranges, batch sizes bounded by what is left, and a
caller's consumer reused and left open."""

from __future__ import annotations

from typing import Any

from streams.kafka.clients import make_consumer
from streams.kafka.reader import end_offsets, read_batches
from tamiyo.config import Settings
from tests.streams.kafka_io import produce


class RecordingConsumer:
    """The real consumer, with every consume() call's num_messages written down."""

    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer
        self.calls: list[tuple[int, int]] = []  # (num_messages asked, messages returned)

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list:
        batch = self.consumer.consume(num_messages=num_messages, timeout=timeout)
        self.calls.append((num_messages, len(batch)))
        return batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self.consumer, name)


def test_read_batches_reads_the_range_never_asks_for_more_than_is_left_and_leaves_a_given_consumer_open(
        topics_ready: Settings) -> None:
    settings = topics_ready
    topic = settings.topics.experience
    produce(settings, topic, [(f"m{i % 7}".encode(), f"v{i}".encode()) for i in range(250)])
    ends = end_offsets(settings, topic)
    assert sum(ends.values()) == 250 and len(ends) == 2
    start = {p: 3 for p in ends}  # skip each partition's first three records
    consumer = RecordingConsumer(make_consumer(settings))
    try:
        got = [m for batch in read_batches(settings, topic, start, ends, idle_timeout=5.0, consumer=consumer)
               for m in batch]
        # Exactly the range, in offset order per partition.
        for p, end in ends.items():
            assert [m.offset() for m in got if m.partition() == p] == list(range(3, end))
        # librdkafka waits for num_messages or the timeout: never ask for more than the range holds.
        assert consumer.calls and consumer.calls[0][0] == 250 - 6
        left = 250 - 6
        for asked, returned in consumer.calls:
            assert 1 <= asked <= max(1, left)
            left -= returned
        # The caller's consumer is still open, unassigned, and reads again.
        assert consumer.assignment() == []
        again = [m for batch in read_batches(settings, topic, None, ends, consumer=consumer) for m in batch]
        assert len(again) == 250
        # A range that ends before the partitions do: the records after it are fetched too, and dropped.
        short = {p: end - 40 for p, end in ends.items()}
        part = [m for batch in read_batches(settings, topic, None, short, consumer=consumer) for m in batch]
        for p, end in short.items():
            assert [m.offset() for m in part if m.partition() == p] == list(range(end))
    finally:
        consumer.close()
