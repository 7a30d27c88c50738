"""Prometheus metrics of one worker (served on TAMIYO_METRICS_PORT when it is set)."""

from __future__ import annotations

from typing import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

from streams.context import Counters


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter("tamiyo_events_total", "Messages processed, by kind", ["kind"], registry=r)
        self.decision_batch_seconds = Histogram(
            "tamiyo_decision_batch_seconds", "Time to decide one batch of due models",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0), registry=r)
        self.decision_latency_seconds = Histogram(
            "tamiyo_decision_latency_seconds",
            "From an EpochOutcome's Kafka timestamp to its decision's delivery (record and command acked)",
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0), registry=r)
        self.policy_version = Info("tamiyo_policy", "The policy version being served", registry=r)
        self.hot_swaps = Counter("tamiyo_policy_hot_swaps_total", "Policy hot swaps", registry=r)
        self.registry_errors = Counter("tamiyo_registry_errors_total", "Failed registry polls", registry=r)
        self.consumer_lag = Gauge("tamiyo_consumer_lag", "Consumer lag by topic", ["topic"], registry=r)
        self.commit_holds = Gauge("tamiyo_commit_holds", "Parked messages holding their partition's commit back",
                                  registry=r)
        self.recovery_rejoins = Counter("tamiyo_recovery_rejoins_total",
                                        "Group rejoins asked for because table recovery made no progress", registry=r)
        self._seen: dict[str, int] = {}

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        start_http_server(port, addr=addr, registry=self.registry)

    def observe_counters(self, counters: Counters) -> None:
        for kind, value in counters.as_dict().items():
            delta = value - self._seen.get(kind, 0)
            if delta > 0:
                self.events.labels(kind).inc(delta)
                self._seen[kind] = value

    def observe_lag(self, lag_by_topic: dict[str, int], commit_holds: int = 0) -> None:
        """Set the consumer-lag gauge (records not yet committed, summed over assigned partitions) and
        the number of parked messages that keep commits back (a number that only grows is a leak)."""
        for topic, lag in lag_by_topic.items():
            self.consumer_lag.labels(topic).set(lag)
        self.commit_holds.set(commit_holds)

    def observe_decisions(self, count: int, seconds: float, version: str,
                          latencies: Iterable[float] = ()) -> None:
        """One delivered batch: its duration, the serving version, and per decision the seconds since
        its outcome's Kafka timestamp (the host's clock: skew shifts it; negatives count as 0)."""
        self.decision_batch_seconds.observe(seconds)
        self.policy_version.info({"version": version})
        for latency in latencies:
            self.decision_latency_seconds.observe(max(latency, 0.0))
