"""What create_app hands to Faust: the session timeout and the seek guard (no broker needed)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from streams.factory import create_app
from tamiyo.config import Settings


def test_the_session_timeout_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BROKER_SESSION_TIMEOUT", raising=False)  # Faust's own variable would win
    monkeypatch.delenv("BROKER_HEARTBEAT_INTERVAL", raising=False)
    monkeypatch.setenv("TAMIYO_BROKER_SESSION_TIMEOUT", "7.5")
    settings = Settings.from_env(bootstrap_servers="127.0.0.1:1", data_dir=tmp_path)
    app, _ = create_app(settings)
    assert settings.broker_session_timeout == 7.5
    assert app.conf.broker_session_timeout == 7.5 and app.conf.broker_heartbeat_interval == 0.75
    assert Settings().broker_session_timeout == 10.0  # the documented default
    with pytest.raises(ValueError, match="TAMIYO_BROKER_SESSION_TIMEOUT"):
        Settings(broker_session_timeout=0).validate()


def test_workers_seek_through_the_guard(tmp_path: Path) -> None:
    from faust.transport.consumer import Consumer, ThreadDelegateConsumer

    app, _ = create_app(Settings(bootstrap_servers="127.0.0.1:1", data_dir=tmp_path))
    consumer = type(app.consumer)
    assert issubclass(consumer, ThreadDelegateConsumer)
    for name, method in (("perform_seek", Consumer.perform_seek), ("getmany", Consumer.getmany),
                         ("resume_flow", Consumer.resume_flow), ("_getmany", ThreadDelegateConsumer._getmany)):
        assert getattr(consumer, name) is method and method.__module__ == "streams.faust_seek", name


def test_the_worker_consumer_long_polls_for_at_most_the_configured_wait(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Faust hard-codes a 1.5 s fetch wait; a fetch of idle partitions then stalls every busy one."""
    monkeypatch.setenv("TAMIYO_FETCH_MAX_WAIT_MS", "35")
    settings = Settings.from_env(bootstrap_servers="127.0.0.1:1", data_dir=tmp_path)
    app, _ = create_app(settings)

    async def build() -> int:  # built, never started (aiokafka wants a running loop)
        consumer = app.consumer._thread._create_worker_consumer(app.transport)
        await consumer.stop()
        return consumer._fetch_max_wait_ms

    assert settings.fetch_max_wait_ms == 35 and asyncio.run(build()) == 35
    assert Settings().fetch_max_wait_ms == 20  # the documented default
    with pytest.raises(ValueError, match="TAMIYO_FETCH_MAX_WAIT_MS"):
        Settings(fetch_max_wait_ms=-1).validate()


def test_table_changelogs_are_encoded_by_orjson_and_stay_plain_json() -> None:
    """orjson is a dependency for speed; what it writes must read back the same with any JSON reader
    (changelogs written before it, or by another worker version, are plain JSON too)."""
    import json

    from faust.utils import json as faust_json

    from models.graph import update_layer_aggregate
    from tests.samples import SAMPLES

    assert faust_json.orjson is not None
    aggregate = update_layer_aggregate(update_layer_aggregate(None, SAMPLES["HealthSignal"]),
                                       dict(SAMPLES["HealthSignal"], health_score=float("nan"), timestamp_ms=2))
    state = {"run_id": "run-1", "epoch": 3, "layers": {"layers.0": aggregate}}
    encoded = faust_json.dumps(state)
    plain = json.loads(json.dumps(state))  # JSON has no tuples: the seed states come back as a list
    assert isinstance(encoded, bytes) and json.loads(encoded) == plain == faust_json.loads(json.dumps(state))
    assert plain["layers"]["layers.0"] == dict(aggregate, seed_states=list(aggregate["seed_states"]))


def test_the_worker_runs_torch_on_the_configured_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from streams.worker import limit_torch_threads

    monkeypatch.setenv("TAMIYO_TORCH_THREADS", "1")
    assert Settings.from_env().torch_threads == 1 == Settings().torch_threads  # the documented default
    with pytest.raises(ValueError, match="TAMIYO_TORCH_THREADS"):
        Settings(torch_threads=0).validate()
    before = torch.get_num_threads()
    try:
        limit_torch_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
