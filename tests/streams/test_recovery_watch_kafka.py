"""The recovery watchdog on a real worker whose table recovery cannot finish.

The stall is made the way Faust cannot get out of it: a changelog partition that ends with a
transaction marker. Faust's recovery waits for the offset before the high watermark, which is the
marker, and (without exactly-once processing) never skips it: the same symptom as the hang seen in
CI, "No event received for active tp ...", for as long as the worker runs.
"""

from __future__ import annotations

import json
import re

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streams.kafka.clients import base_config
from streams.recovery_watch import EXIT_RECOVERY_STALLED
from tamiyo.chaos.harness import wait_until
from tamiyo.config import Settings
from tests.streams.test_worker_kafka import free_port, scrape

pytestmark = pytest.mark.kafka


def changelog_ending_in_a_marker(settings: Settings, table: str) -> str:
    """Create ``table``'s changelog (as Faust would, compacted) and write one entry to each partition
    in a committed transaction: each partition then ends with a commit marker."""
    topic = f"{settings.topic_prefix}-worker-{table}-changelog"
    admin = AdminClient(base_config(settings))
    for future in admin.create_topics([NewTopic(topic, settings.partitions, 1,
                                                config={"cleanup.policy": "compact"})]).values():
        future.result(30)
    producer = Producer(base_config(settings) | {"transactional.id": f"{topic}-test"})
    producer.init_transactions(30)
    producer.begin_transaction()
    for partition in range(settings.partitions):
        producer.produce(topic, key=json.dumps(f"m-{partition}").encode(), value=b"{}", partition=partition)
    producer.commit_transaction(30)
    return topic


def test_a_stalled_recovery_is_rejoined_then_the_worker_exits_for_its_supervisor(topics_ready, start_worker) -> None:
    changelog_ending_in_a_marker(topics_ready, "gate_state")
    port = free_port()
    worker = start_worker(TAMIYO_RECOVERY_STALL_SECONDS="6", TAMIYO_RECOVERY_MAX_REJOINS="1",
                          TAMIYO_METRICS_PORT=str(port))
    wait_until(lambda: "rejoining the group" in worker.log(), 120, what="the stall to be noticed", alive=worker.alive)
    rejoins = scrape(port)["tamiyo_recovery_rejoins"]  # the exit comes 6-11 s after the rejoin
    assert [s.value for s in rejoins if s.name.endswith("_total")] == [1.0]
    wait_until(lambda: not worker.alive(), 60, what="the worker to give up on its recovery")
    assert worker.stop() == EXIT_RECOVERY_STALLED
    log = worker.log()
    assert re.search(r"table recovery made no progress for 6 s; rejoining the group to restart it \(rejoin 1 of 1\)"
                     r".*remaining=\{\S*gate_state-changelog/\d: 0/1/2", log), log[-3000:]
    stalled_at = log.index("rejoining the group")
    # The rejoin restarted recovery: Faust read the changelogs again after it.
    assert "Restoring state from changelog topics" in log[stalled_at:], log[stalled_at:][-3000:]
    assert "no progress after 1 rejoins; exiting with 75" in log
