"""Tamiyo's schemas in a Confluent-compatible schema registry: subjects, registration, id look-ups.

Subjects follow the **RecordNameStrategy**: one subject per record, named by the record's full name
(``tamiyo.HealthSignal``), whatever topic carries it. Not TopicNameStrategy (one schema per topic):
``tamiyo.outcomes`` carries two records and ``tamiyo.experience`` all of them. Not
TopicRecordNameStrategy either: the experience topic archives the original bytes of every topic, so
a record's schema id must mean the same on every topic, and a record has one line of released
versions (``schemas/avro/releases``) whatever the topic prefix; one subject per record says both.

Start-up does every network call: a writer registers each record's released versions, oldest
first, then its current schema (so the registry's compatibility rules see the same history as
``releases/``); a reader looks every shipped schema up. Afterwards ``schemas.codec`` encodes and
decodes from the cached ids; only an id it has never seen needs the registry again.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from schemas.codec import ConfluentIds, SchemaLookupError, _Schema, registry
from schemas.registry_client import RegistryClient, RegistryError

log = logging.getLogger(__name__)


def subject_of(schema: _Schema) -> str:
    """RecordNameStrategy: the record's full name."""
    return schema.full_name


def register_all(client: RegistryClient, ids: ConfluentIds) -> None:
    """Register every released and current schema; the current ones become the writer ids."""
    reg = registry()
    for name in reg.names():
        current = reg.current[name]
        versions = [s for s in reg.releases.get(name, []) if s is not current] + [current]
        for schema in versions:
            try:
                schema_id = client.register(subject_of(schema), schema.text)
            except RegistryError as exc:
                raise RegistryError(f"cannot register {schema.full_name} under subject {subject_of(schema)!r}: "
                                    f"{exc}", exc.status, exc.error_code) from None
            ids.adopt(schema_id, schema, write=schema is current)


def look_up_all(client: RegistryClient, ids: ConfluentIds) -> int:
    """Pre-resolve the ids of every shipped schema that is registered; returns how many were.
    A registry that does not answer is logged, not raised: ids are then resolved when first seen."""
    found = 0
    for schema in registry().known():
        try:
            schema_id = client.lookup(subject_of(schema), schema.text)
        except RegistryError as exc:
            log.warning("could not pre-resolve schema ids at %s (%s); unknown ids will be looked up "
                        "when they arrive", client.url, exc)
            return found
        if schema_id is not None:
            ids.adopt(schema_id, schema)
            found += 1
    return found


def fetcher(client: RegistryClient, retry_s: float,
            sleep: Callable[[float], None] = time.sleep) -> Callable[[int], str]:
    """``fetch(id)`` for ConfluentIds: retries transient failures for up to ``retry_s`` seconds.

    An id the registry does not know is ``unknown_schema_id`` (permanent); a registry that refuses
    the call (4xx) or keeps failing is ``schema_lookup_failed``.
    """

    def fetch(schema_id: int) -> str:
        started = time.monotonic()
        delay, attempts = 0.1, 0
        while True:
            attempts += 1
            try:
                return client.schema_by_id(schema_id)
            except RegistryError as exc:
                if exc.status == 404:
                    raise SchemaLookupError("unknown_schema_id", f"schema id {schema_id} is not in the schema "
                                                                 f"registry at {client.url}", True) from None
                elapsed = time.monotonic() - started
                if exc.permanent or elapsed >= retry_s:
                    raise SchemaLookupError("schema_lookup_failed", f"schema id {schema_id}: {exc} "
                                            f"({attempts} attempts in {elapsed:.1f} s)", exc.permanent) from None
                sleep(min(delay, retry_s - elapsed))
                delay = min(delay * 2, 2.0)

    return fetch


def connect(client: RegistryClient, write: bool, retry_s: float = 30.0) -> ConfluentIds:
    """Ids for the codec (``schemas.codec.use_confluent``): registered when this process writes
    (raises RegistryError: a writer cannot start without its ids), else looked up."""
    ids = ConfluentIds(fetcher(client, retry_s), client.url, retry_ttl_s=retry_s)
    if write:
        register_all(client, ids)
        log.info("registered %d schemas at %s (subjects: record names)", len(ids.schemas), client.url)
    else:
        log.info("pre-resolved %d schema ids at %s", look_up_all(client, ids), client.url)
    return ids
