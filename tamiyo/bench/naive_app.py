"""The naive Faust baseline: per signal one table write and one awaited ``topic.send``.

Run as ``python -m tamiyo.bench.naive_app`` with the worker's environment (KAFKA_BOOTSTRAP_SERVERS,
TAMIYO_TOPIC_PREFIX, TAMIYO_DATA_DIR, TAMIYO_PARTITIONS). Reads ``<prefix>.health`` and copies every
decoded signal (alone, or each of a HealthReport's) to ``<prefix>.naive-out`` (the benchmark counts that topic).
"""

from __future__ import annotations

import logging
import sys

import faust

from schemas import DecodeError, decode, encode
from schemas.health_batch import batch_signals
from tamiyo.config import Settings

OUT_SUFFIX = "naive-out"


def out_topic(settings: Settings) -> str:
    return f"{settings.topic_prefix}.{OUT_SUFFIX}"


def _bench_app(settings: Settings, name: str, **options: object) -> faust.App:
    """A plain Faust app of its own consumer group on the benchmark's broker (Faust's defaults)."""
    return faust.App(
        f"{settings.topic_prefix}-{name}",
        broker=[f"kafka://{s}" for s in settings.bootstrap_servers.split(",")],
        store="memory://",
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        datadir=str(settings.data_dir / f"faust-{name}"),
        **options,
    )


def create_naive_app(settings: Settings) -> faust.App:
    app = _bench_app(settings, "naive")
    source = app.topic(settings.topics.health, key_serializer="raw", value_serializer="raw")
    sink = app.topic(out_topic(settings), key_serializer="raw", value_serializer="raw")
    latest = app.Table("naive_latest", default=dict, partitions=settings.partitions)

    @app.agent(source)
    async def naive(stream):  # type: ignore[no-untyped-def]
        async for key, value in stream.items():
            try:
                decoded = decode(value)
            except DecodeError:
                continue
            if decoded.name == "HealthSignal":
                signals, values = [decoded.value], [value]
            else:  # a HealthReport or HealthBatch: the naive pattern handles its signals one by one
                signals = (batch_signals(decoded.value) if decoded.name == "HealthBatch"
                           else decoded.value["signals"])
                values = [encode("HealthSignal", s) for s in signals]
            for record, signal_bytes in zip(signals, values):
                latest[record["model_id"]] = {"layer": record["layer_name"], "health": record["health_score"]}
                await sink.send(key=key, value=signal_bytes)

    return app


def create_count_app(settings: Settings) -> faust.App:
    """Faust's delivery ceiling: an agent that takes events in batches and does nothing with them.
    Progress is visible as the group's committed offsets (committed every 0.5 s)."""
    app = _bench_app(settings, "count", broker_commit_every=10_000, broker_commit_interval=0.5)
    source = app.topic(settings.topics.health, key_serializer="raw", value_serializer="raw")

    @app.agent(source)
    async def count(stream):  # type: ignore[no-untyped-def]
        async for events in stream.take_events(4096, within=0.05):
            pass

    return app


def main() -> int:
    import os

    settings = Settings.from_env()
    logging.basicConfig(level=logging.WARNING)
    kind = os.environ.get("TAMIYO_BENCH_APP", "naive")
    app = create_count_app(settings) if kind == "count" else create_naive_app(settings)
    worker = faust.Worker(app, loglevel="warn", quiet=True, redirect_stdouts=False)
    worker.spinner = None  # else Faust sets the root logger to DEBUG at level warn
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
