"""A model's topology table entry remembers the runs it replaced, so late messages of them are known."""

from __future__ import annotations

from streams.context import WorkerContext
from streams.telemetry import SUPERSEDED_RUNS, has_topology_for, run_superseded, store_topology
from tamiyo.config import Settings


def _ctx() -> WorkerContext:
    ctx = WorkerContext(settings=Settings.from_env(bootstrap_servers="127.0.0.1:1", topic_prefix="t"))
    ctx.topologies = {}  # a dict stands in for the Faust table (get / item assignment)
    return ctx


def topology(run: str, layers: int = 2) -> dict:
    return {"model_id": "m", "run_id": run, "layers": [{"name": f"l{i}"} for i in range(layers)]}


def test_a_new_run_supersedes_the_old_one_and_old_topologies_are_refused() -> None:
    ctx = _ctx()
    assert store_topology(ctx, topology("r1"))
    assert "superseded_runs" not in ctx.topologies["m"]  # the record as received while nothing was replaced
    assert store_topology(ctx, topology("r1", layers=3))  # same run, new layers (a germinated seed)
    assert len(ctx.topologies["m"]["layers"]) == 3 and not run_superseded(ctx, {"model_id": "m", "run_id": "r1"})
    assert store_topology(ctx, topology("r2"))
    assert ctx.topologies["m"]["superseded_runs"] == ["r1"]
    late = {"model_id": "m", "run_id": "r1"}
    assert run_superseded(ctx, late) and not has_topology_for(ctx, late)
    assert not store_topology(ctx, topology("r1"))  # re-read after a restart: r2 stays
    assert ctx.topologies["m"]["run_id"] == "r2"
    assert not run_superseded(ctx, {"model_id": "other", "run_id": "r1"})
    assert not run_superseded(ctx, {"model_id": "m", "run_id": "r3"})  # a future run is not late


def test_only_the_last_runs_are_remembered() -> None:
    ctx = _ctx()
    for i in range(SUPERSEDED_RUNS + 3):
        assert store_topology(ctx, topology(f"r{i}"))
    remembered = ctx.topologies["m"]["superseded_runs"]
    assert remembered == [f"r{i}" for i in range(2, SUPERSEDED_RUNS + 2)]  # r0..r9 replaced; r10 current
    assert store_topology(ctx, topology("r0"))  # forgotten: treated as a new run
