"""The worker-crash check on differing re-decisions, against records replayed from Kafka."""

from __future__ import annotations

import pytest

from tamiyo.chaos.worker_crash import redecisions_not_as_handled
from tests.training.test_episodes import command, decision

pytestmark = pytest.mark.kafka


def test_the_check_replays_the_kept_record_and_compares_it_with_the_handled_command(topics_ready) -> None:
    from schemas import encode
    from streams.archive import TYPE_HEADER
    from streams.kafka.clients import make_producer

    settings = topics_ready
    germinate, wait = decision("x", 0, 1, action=1), decision("x", 0, 2, action=0)
    first_wait, later = decision("y", 0, 1, action=0), decision("y", 0, 2, action=1)
    archived = [("DecisionRecord", germinate), ("AdaptationCommand", command(germinate)), ("DecisionRecord", wait),
                ("DecisionRecord", first_wait), ("DecisionRecord", later)]  # y's command never reached the topic
    producer = make_producer(settings)
    for name, value in archived:
        producer.produce(settings.topics.experience, key=value["model_id"].encode(), value=encode(name, value),
                         headers=[(TYPE_HEADER, name.encode())])
    assert producer.flush(30) == 0
    ids = [germinate["decision_id"], first_wait["decision_id"]]

    assert redecisions_not_as_handled(settings, ids, {germinate["decision_id"]: command(germinate)}) == []
    assert redecisions_not_as_handled(settings, [], {}) == []
    # Had hosts handled y's GERMINATE (its command read on the commands topic but never archived), the
    # record replay keeps (the WAIT) would not be what the host did: the check fails.
    (wrong,) = redecisions_not_as_handled(settings, ids, {germinate["decision_id"]: command(germinate),
                                                          first_wait["decision_id"]: command(later)})
    assert wrong.startswith(first_wait["decision_id"]) and "kept 0" in wrong


@pytest.mark.parametrize(("epochs", "violations"), [([3, 5], 0), ([3, 4], 1), ([3, 4, 5], 2), ([5, 3, 4], 2)])
def test_cooldown_violations_count_applied_adaptations_of_a_layer_too_close_together(epochs, violations) -> None:
    from tamiyo.chaos.worker_crash import cooldown_violations

    applied = [("m", "run-1", "layers.0", e) for e in epochs]
    others = [("m", "run-1", "layers.1", 4), ("m", "run-2", "layers.0", 4), ("n", "run-1", "layers.0", 4)]
    assert cooldown_violations(applied + others, cooldown_epochs=2) == violations
