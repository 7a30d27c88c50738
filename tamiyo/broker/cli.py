"""`tamiyo broker` / `tamiyo schema-registry`: run an embedded service in the foreground until Ctrl-C."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import threading
from typing import Any, Iterator

from tamiyo.broker import BrokerError, start_broker
from tamiyo.config import KafkaSecurity, Settings

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by Ctrl-C / SIGTERM (handlers only on the main thread; restored afterwards)."""
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve(service: Any, stop: threading.Event) -> int:
    """Block until ``stop`` (0) or until the service's process dies (1)."""
    while not stop.wait(0.5):
        if service.pid is None:
            log.error("the %s exited unexpectedly; see %s", service.kind, getattr(service, "log_file", "?"))
            return 1
    log.info("stopping the %s", service.kind)
    return 0


def run_broker(settings: Settings, port: int = 0) -> int:
    """Start the broker ``settings.broker`` selects, ensure the topics, print the bootstrap line, block.

    Returns when Ctrl-C / SIGTERM arrives (after a clean stop: exit code 0) or when the broker process dies (1).
    """
    from streams.kafka.admin import ensure_topics

    if settings.bootstrap_servers:
        log.warning("KAFKA_BOOTSTRAP_SERVERS=%s is set; starting an embedded broker anyway", settings.bootstrap_servers)
    broker = None
    with _stop_on_signals() as stop:
        try:
            try:
                broker = start_broker(settings, port=port)
                # The embedded broker is plain text on 127.0.0.1, whatever security the environment asks for.
                local = dataclasses.replace(settings, bootstrap_servers=broker.bootstrap, security=KafkaSecurity())
                created = ensure_topics(local)
            except BrokerError as exc:
                log.error("%s", exc)
                print(f"error: {exc}", flush=True)
                return 1
            print(f"KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap}", flush=True)
            log.info("%s broker pid %s; topics %s (%d created); Ctrl-C to stop", broker.kind, broker.pid,
                     ", ".join(local.topics.all()), len(created))
            return _serve(broker, stop)
        finally:
            if broker is not None:
                broker.stop()


def run_schema_registry(settings: Settings, port: int = 0) -> int:
    """Start the embedded schema registry (Apicurio, Confluent-compatible API; basic auth with
    ``TAMIYO_SCHEMA_REGISTRY_USER_INFO`` when set), print its URL, block until Ctrl-C / SIGTERM."""
    from tamiyo.broker.registry import EmbeddedSchemaRegistry

    if settings.schema_registry.url:
        log.warning("TAMIYO_SCHEMA_REGISTRY_URL=%s is set; starting an embedded registry anyway",
                    settings.schema_registry.url)
    registry = EmbeddedSchemaRegistry(settings.data_dir / "schema-registry", port=port,
                                      user_info=settings.schema_registry.user_info)
    with _stop_on_signals() as stop:
        try:
            try:
                url = registry.start()
            except BrokerError as exc:
                log.error("%s", exc)
                print(f"error: {exc}", flush=True)
                return 1
            print(f"TAMIYO_SCHEMA_REGISTRY_URL={url}", flush=True)
            log.info("schema registry pid %s (in-memory: everything is lost when it stops); Ctrl-C to stop",
                     registry.pid)
            return _serve(registry, stop)
        finally:
            registry.stop()
