"""The worker's Faust tables. All are keyed by model id and co-partitioned with the input topics."""

from __future__ import annotations

from datetime import timedelta

import faust

from streams.context import WorkerContext


def declare_tables(app: faust.App, ctx: WorkerContext) -> None:
    partitions = ctx.settings.partitions
    ctx.topologies = app.Table("topologies", default=dict, partitions=partitions,
                               help="model_id -> latest ModelTopology")
    ctx.graphs = app.Table("graphs", default=dict, partitions=partitions,
                           help="model_id -> per-layer health aggregates of one window").tumbling(
        timedelta(seconds=ctx.settings.window_seconds),
        expires=timedelta(seconds=ctx.settings.window_expires_seconds),
    )
    ctx.gate_state = app.Table("gate_state", default=dict, partitions=partitions,
                               help="model_id -> cooldowns and the last decided epoch")
