"""``tamiyo status``: what the system is doing right now, read from Kafka and the registry.

* every Tamiyo topic: partitions and end offsets (records written so far);
* the worker consumer group (Faust group id ``<prefix>-worker``): members and lag per input topic;
* the champion policy version from the MLflow registry (``none`` when there is none yet; a registry
  that does not answer within a few seconds is reported as unreachable, never waited for);
* the latest decision per model, from the DecisionRecords at the end of the experience topic.

``collect_status(settings)`` returns all of it as a dict; ``run_status(settings)`` prints it.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from tamiyo.config import Settings

#: Topics the worker group consumes (lag is reported for these).
INPUT_TOPICS = ("topology", "health", "outcomes", "commands")


@dataclass
class StatusOptions:
    registry_timeout_s: float = 5.0
    kafka_timeout_s: float = 10.0
    #: How far back (records per partition) to look for the latest decisions.
    decision_scan_per_partition: int = 20_000
    #: How many models to print (most recent decisions first); all are in the dict.
    show_models: int = 20


def topic_offsets(settings: Settings, timeout: float = 10.0) -> dict[str, dict[str, Any]]:
    """{topic: {"partitions": n, "end_offsets": {p: end}, "records": sum(end - start)}}; missing topics:
    {"missing": True}."""
    from streams.kafka.clients import make_consumer
    from streams.kafka.reader import watermarks  # retries while a new topic's leader settles

    consumer = make_consumer(settings)
    try:
        metadata = consumer.list_topics(timeout=timeout)
        out: dict[str, dict[str, Any]] = {}
        for topic in settings.topics.all():
            info = metadata.topics.get(topic)
            if info is None or info.error is not None:
                out[topic] = {"missing": True, "partitions": 0, "end_offsets": {}, "records": 0}
                continue
            ends, records = {}, 0
            for p in sorted(info.partitions):
                low, high = watermarks(consumer, topic, p, timeout=timeout)
                ends[p] = high
                records += max(high - low, 0)
            out[topic] = {"partitions": len(ends), "end_offsets": ends, "records": records}
        return out
    finally:
        consumer.close()


def group_lag(settings: Settings, offsets: dict[str, dict[str, Any]], timeout: float = 10.0) -> dict[str, Any]:
    """Committed offsets of the worker group on its input topics and the lag (end - committed).

    A partition the group never committed counts its whole retained content as lag.
    """
    from confluent_kafka import TopicPartition

    from streams.kafka.clients import make_consumer
    from streams.kafka.reader import partition_lag, watermarks

    group = settings.worker_group
    topics = settings.topics
    inputs = [getattr(topics, name) for name in INPUT_TOPICS]
    tps = [TopicPartition(t, p) for t in inputs if not offsets.get(t, {}).get("missing")
           for p in offsets[t]["end_offsets"]]
    result: dict[str, Any] = {"group": group, "members": _group_members(settings, group, timeout), "topics": {}}
    if not tps:
        return result
    consumer = make_consumer(settings, group_id=group, **{"enable.auto.commit": False})
    try:
        committed = consumer.committed(tps, timeout=timeout)
        lows = {(tp.topic, tp.partition): watermarks(consumer, tp.topic, tp.partition, timeout=timeout)[0]
                for tp in tps}
    finally:
        consumer.close()
    total = 0
    for tp in committed:
        lag = partition_lag(tp.offset, lows[(tp.topic, tp.partition)], offsets[tp.topic]["end_offsets"][tp.partition])
        entry = result["topics"].setdefault(tp.topic, {"lag": 0, "committed": {}})
        entry["lag"] += lag
        entry["committed"][tp.partition] = tp.offset if tp.offset >= 0 else None
        total += lag
    result["total_lag"] = total
    return result


def _group_members(settings: Settings, group: str, timeout: float) -> int | None:
    """Members of the consumer group (None when the broker does not say)."""
    try:
        from confluent_kafka.admin import AdminClient

        from streams.kafka.clients import base_config

        admin = AdminClient(base_config(settings))
        future = admin.describe_consumer_groups([group], request_timeout=timeout)[group]
        return len(future.result(timeout).members)
    except Exception:
        return None


def champion(settings: Settings, timeout: float = 5.0) -> dict[str, Any]:
    """{"version": "7" | "none" | None, "state": "ok" | "none" | "no registry" | "unreachable", ...}.

    A sqlite registry that does not exist yet is "no registry" (nothing is created). Any other store is
    asked from a thread; no answer within ``timeout`` seconds is "unreachable".
    """
    uri = settings.tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return {"version": "none", "state": "no registry", "tracking_uri": uri}
    answer: dict[str, Any] = {}

    def ask() -> None:
        try:
            from training.registry import PolicyRegistry, configure_client_env

            configure_client_env(max_retries=0, timeout_s=max(1, int(timeout)))
            ref = PolicyRegistry(uri, settings.registered_model).champion()
            answer["ref"] = ref
        except Exception as exc:  # unreachable, wrong URI, no such model ...
            answer["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=ask, daemon=True, name="registry")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return {"version": None, "state": "unreachable", "tracking_uri": uri,
                "error": f"no answer within {timeout:.0f}s"}
    if "error" in answer:
        return {"version": None, "state": "unreachable", "tracking_uri": uri, "error": answer["error"][:300]}
    ref = answer.get("ref")
    if ref is None:
        return {"version": "none", "state": "none", "tracking_uri": uri}
    return {"version": str(ref.version), "state": "ok", "run_id": ref.run_id, "tracking_uri": uri,
            "serving_name": f"{settings.registered_model}/v{ref.version}"}


def latest_decisions(settings: Settings, offsets: dict[str, dict[str, Any]], per_partition: int = 20_000,
                     timeout: float = 10.0) -> dict[str, dict[str, Any]]:
    """model_id -> its latest DecisionRecord (by epoch, then time) among the last ``per_partition``
    records of every experience partition. Only records whose ``tamiyo.type`` header says
    DecisionRecord are decoded."""
    from schemas import DecodeError, decode
    from streams.archive import TYPE_HEADER
    from streams.kafka.reader import read_topic

    topic = settings.topics.experience
    info = offsets.get(topic, {})
    if info.get("missing") or not info.get("records"):
        return {}
    ends = info["end_offsets"]
    start = {p: max(end - per_partition, 0) for p, end in ends.items()}
    wanted = TYPE_HEADER
    latest: dict[str, dict[str, Any]] = {}
    for message in read_topic(settings, topic, start, dict(ends), idle_timeout=min(timeout, 5.0)):
        if not any(k == wanted and v == b"DecisionRecord" for k, v in (message.headers() or [])):
            continue
        try:
            record = decode(message.value()).value
        except DecodeError:
            continue
        key = (record["epoch"], record["timestamp_ms"])
        known = latest.get(record["model_id"])
        if known is None or key >= (known["epoch"], known["timestamp_ms"]):
            latest[record["model_id"]] = record
    return latest


def collect_status(settings: Settings, options: StatusOptions | None = None) -> dict[str, Any]:
    """Everything ``tamiyo status`` shows, as a dict (topics, group, champion, decisions, errors)."""
    options = options or StatusOptions()
    out: dict[str, Any] = {"prefix": settings.topic_prefix, "bootstrap": settings.bootstrap_servers,
                           "errors": {}}
    # The registry answers in parallel with the Kafka reads.
    registry_answer: dict[str, Any] = {}
    registry = threading.Thread(target=lambda: registry_answer.update(champion(settings, options.registry_timeout_s)),
                                daemon=True)
    registry.start()
    try:
        offsets = topic_offsets(settings, options.kafka_timeout_s)
        out["topics"] = offsets
    except Exception as exc:
        offsets = {}
        out["topics"] = {}
        out["errors"]["kafka"] = f"{type(exc).__name__}: {exc}"
    if offsets:
        try:
            out["worker_group"] = group_lag(settings, offsets, options.kafka_timeout_s)
        except Exception as exc:
            out["errors"]["worker_group"] = f"{type(exc).__name__}: {exc}"
        try:
            out["decisions"] = latest_decisions(settings, offsets, options.decision_scan_per_partition,
                                                options.kafka_timeout_s)
        except Exception as exc:
            out["errors"]["decisions"] = f"{type(exc).__name__}: {exc}"
    registry.join(options.registry_timeout_s + 1.0)
    out["champion"] = registry_answer or {"version": None, "state": "unreachable",
                                          "tracking_uri": settings.tracking_uri}
    return out


def render(status: dict[str, Any], show_models: int = 20, now_ms: int | None = None) -> str:
    """The human-readable report of :func:`collect_status`'s dict."""
    now_ms = now_ms or int(time.time() * 1000)
    lines = [f"Tamiyo status  prefix={status['prefix']}  broker={status['bootstrap']}", ""]
    lines.append("Topics")
    lines.append(f"  {'topic':<34}{'partitions':>11}{'end offsets (sum)':>19}   per partition")
    for topic, info in status.get("topics", {}).items():
        if info.get("missing"):
            lines.append(f"  {topic:<34}{'missing':>11}")
            continue
        ends = info["end_offsets"]
        per = " ".join(f"{p}:{o}" for p, o in ends.items())
        lines.append(f"  {topic:<34}{info['partitions']:>11}{sum(ends.values()):>19,}   {per}")
    group = status.get("worker_group")
    lines.append("")
    if group is not None:
        members = "?" if group.get("members") is None else group["members"]
        lines.append(f"Worker group {group['group']}: {members} member(s), total lag {group.get('total_lag', 0):,}")
        for topic, entry in group.get("topics", {}).items():
            never = sum(1 for o in entry["committed"].values() if o is None)
            note = f"  ({never} partition(s) never committed)" if never else ""
            lines.append(f"  {topic:<34} lag {entry['lag']:>12,}{note}")
    champ = status.get("champion", {})
    lines.append("")
    state = champ.get("state")
    if state == "ok":
        lines.append(f"Champion: version {champ['version']} ({champ.get('serving_name', '')})  "
                     f"registry {champ['tracking_uri']}")
    elif state in ("none", "no registry"):
        lines.append(f"Champion: none ({state})  registry {champ.get('tracking_uri', '')}")
    else:
        lines.append(f"Champion: unknown, registry unreachable ({champ.get('error', '')})  "
                     f"registry {champ.get('tracking_uri', '')}")
    decisions = status.get("decisions") or {}
    lines.append("")
    lines.append(f"Latest decision per model ({len(decisions)} models"
                 + (f", showing the {show_models} most recent)" if len(decisions) > show_models else ")"))
    if decisions:
        lines.append(f"  {'model':<24}{'epoch':>6}  {'action':<10}{'layer':<14}{'kernel':<11}{'p':>6}  "
                     f"{'policy':<26}{'age':>8}")
        recent = sorted(decisions.values(), key=lambda r: r["timestamp_ms"], reverse=True)[:show_models]
        for r in recent:
            age = max(now_ms - r["timestamp_ms"], 0) / 1000.0
            lines.append(f"  {r['model_id'][:23]:<24}{r['epoch']:>6}  {r['action']:<10}"
                         f"{(r.get('layer_name') or '-')[:13]:<14}"
                         f"{(r.get('kernel') or '-')[:10]:<11}{r['propensity']:>6.2f}  {r['policy_version'][:25]:<26}"
                         f"{_age(age):>8}")
    for what, error in (status.get("errors") or {}).items():
        lines.append(f"error ({what}): {error}")
    return "\n".join(lines) + "\n"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def run_status(settings: Settings, out: TextIO | None = None, options: StatusOptions | None = None) -> int:
    """Print the status; exit code 0, or 1 when Kafka could not be read."""
    options = options or StatusOptions()
    status = collect_status(settings, options)
    (out or sys.stdout).write(render(status, options.show_models))
    return 1 if "kafka" in status["errors"] else 0
