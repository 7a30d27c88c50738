"""`tamiyo broker`: run an embedded broker in the foreground with the Tamiyo topics created."""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading

from tamiyo.broker import BrokerError, start_broker
from tamiyo.config import KafkaSecurity, Settings

log = logging.getLogger(__name__)


def run_broker(settings: Settings, port: int = 0) -> int:
    """Start the broker ``settings.broker`` selects, ensure the topics, print the bootstrap line, block.

    Returns when Ctrl-C / SIGTERM arrives (after a clean stop: exit code 0) or when the broker process dies (1).
    """
    from streams.kafka.admin import ensure_topics

    if settings.bootstrap_servers:
        log.warning("KAFKA_BOOTSTRAP_SERVERS=%s is set; starting an embedded broker anyway", settings.bootstrap_servers)
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    broker = None
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
        while not stop.wait(0.5):
            if broker.pid is None:
                log.error("the %s broker exited unexpectedly; see %s", broker.kind, getattr(broker, "log_file", "?"))
                return 1
        log.info("stopping the %s broker", broker.kind)
        return 0
    finally:
        if broker is not None:
            broker.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
