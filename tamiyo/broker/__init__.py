"""Embedded brokers: Apache Kafka (the real thing, via Maven jars) and Tansu (pip-only, memory-only fallback)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Protocol, runtime_checkable

from tamiyo.broker.apache import (
    DEFAULT_MESSAGE_MAX_BYTES,
    BrokerError,
    BrokerUnavailable,
    EmbeddedKafka,
    fetch_kafka_libs,
    java_executable,
    libs_cached,
)
from tamiyo.broker.tansu import TansuBroker
from tamiyo.config import Settings

log = logging.getLogger(__name__)

__all__ = [
    "BrokerError",
    "BrokerHandle",
    "BrokerUnavailable",
    "EmbeddedKafka",
    "TansuBroker",
    "broker_kind_available",
    "choose_broker_kind",
    "fetch_kafka_libs",
    "make_broker",
    "start_broker",
]

TANSU_WARNING = (
    "using the Tansu fallback broker (no java/mvn for Apache Kafka): memory-only (all data lost on stop), "
    "wrong high watermark after multi-record batches, transactions invisible to read_committed consumers. "
    "Fine for a demo; never use it for recovery tests. Install Java 17+ and Maven for the real broker."
)


@runtime_checkable
class BrokerHandle(Protocol):
    kind: str

    @property
    def bootstrap(self) -> str: ...

    @property
    def pid(self) -> int | None: ...

    def start(self, timeout: float = ...) -> str: ...

    def stop(self, timeout: float = ...) -> int | None: ...

    def kill(self) -> None: ...

    def restart(self, timeout: float = ..., hard: bool = False) -> str: ...


def broker_kind_available(kind: str) -> bool:
    """Can a broker of this kind ("kafka" or "tansu") be started here, without asking the network?"""
    if kind == "kafka":
        return java_executable() is not None and (libs_cached() or shutil.which("mvn") is not None)
    if kind == "tansu":
        try:
            from tamiyo.broker.tansu import tansu_binary

            tansu_binary()
            return True
        except BrokerUnavailable:
            return False
    if kind == "auto":
        return broker_kind_available("kafka") or broker_kind_available("tansu")
    raise ValueError(f"unknown broker kind {kind!r} (kafka, tansu or auto)")


def choose_broker_kind(requested: str) -> str:
    """Resolve "auto": Apache Kafka when java and mvn (or cached jars) are there, else Tansu with a warning."""
    if requested in ("kafka", "tansu"):
        return requested
    if requested != "auto":
        raise ValueError(f"unknown broker kind {requested!r} (kafka, tansu or auto)")
    if broker_kind_available("kafka"):
        return "kafka"
    if broker_kind_available("tansu"):
        log.warning(TANSU_WARNING)
        return "tansu"
    raise BrokerUnavailable(
        "no embedded broker available: install Java 17+ and Maven (Apache Kafka) or `pip install 'tamiyo[tansu]'`, "
        "or point KAFKA_BOOTSTRAP_SERVERS at a running broker"
    )


def make_broker(settings: Settings, port: int = 0) -> BrokerHandle:
    """The broker ``settings.broker`` asks for, not started yet."""
    kind = choose_broker_kind(settings.broker)
    if kind == "kafka":
        # Room for the largest record Tamiyo writes (topics allow 2x max_message_bytes) plus batch overhead.
        max_bytes = max(DEFAULT_MESSAGE_MAX_BYTES, settings.max_message_bytes * 2 + 65_536)
        return EmbeddedKafka(Path(settings.data_dir) / "kafka", port=port, message_max_bytes=max_bytes)
    return TansuBroker(Path(settings.data_dir) / "tansu", port=port)


def start_broker(settings: Settings, port: int = 0, timeout: float = 90) -> BrokerHandle:
    """Start the broker chosen by ``settings.broker`` (kafka | tansu | auto); returns the running handle."""
    broker = make_broker(settings, port=port)
    broker.start(timeout)
    return broker
