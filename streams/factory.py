"""Builds one Faust app with its tables and agents from a Settings object."""

from __future__ import annotations

import ssl

import faust

from streams import archive, policy_agent, telemetry
from streams.context import WorkerContext
from streams.faust_compat import install_fetch_max_wait
from streams.faust_seek import install_seek_guard
from streams.kafka.clients import use_wire_format
from streams.metrics import WorkerMetrics
from streams.policy_holder import PolicyHolder, initial_policy
from streams.tables import declare_tables
from tamiyo.config import KafkaSecurity, Settings


def broker_credentials(security: KafkaSecurity) -> object | None:
    if security.sasl_mechanism:
        context = ssl.create_default_context(cafile=security.ssl_cafile or None) \
            if security.protocol.endswith("SSL") else None
        return faust.SASLCredentials(username=security.sasl_username, password=security.sasl_password,
                                     mechanism=security.sasl_mechanism, ssl_context=context)
    if security.protocol == "SSL":
        return faust.SSLCredentials(ssl.create_default_context(cafile=security.ssl_cafile or None))
    return None


def create_app(settings: Settings, policy: PolicyHolder | None = None) -> tuple[faust.App, WorkerContext]:
    """Build the app and its agents for one configuration (unique topic prefixes → separate apps)."""
    use_wire_format(settings, write=True)  # registers the schemas before any agent encodes
    install_seek_guard()  # before any consumer exists: Faust's post-rebalance seek loses messages without it
    install_fetch_max_wait(settings.fetch_max_wait_ms)
    fetch_bytes = max(settings.max_message_bytes * 2, 1_048_576)
    app = faust.App(
        settings.worker_group,
        broker=[f"kafka://{server}" for server in (settings.bootstrap_servers or "127.0.0.1:9092").split(",")],
        broker_credentials=broker_credentials(settings.security),
        store="memory://",
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        key_serializer="raw",
        value_serializer="raw",
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_max_request_size=fetch_bytes,
        # Small per-partition fetches keep the low-volume topics (topology, outcomes) from queueing
        # behind a large health backlog.
        consumer_max_fetch_size=fetch_bytes,
        broker_commit_every=10_000,
        broker_commit_interval=1.0,
        # A worker that stops heartbeating for this long (kill -9, a hung host) loses its partitions
        # to the rest of the group: the takeover time after a crash.
        broker_session_timeout=settings.broker_session_timeout,
        broker_heartbeat_interval=settings.broker_session_timeout / 10,
        table_cleanup_interval=max(settings.window_seconds, 5.0),
        web_enabled=False,
        datadir=str(settings.data_dir / "faust"),
    )
    ctx = WorkerContext(settings=settings)
    ctx.policy = policy or PolicyHolder(initial_policy(settings.policy, settings.seed))
    ctx.metrics = WorkerMetrics()
    declare_tables(app, ctx)
    telemetry.register(app, ctx)
    policy_agent.register(app, ctx)
    archive.register(app, ctx)
    return app, ctx

