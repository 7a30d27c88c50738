"""A trace of Faust's offset bookkeeping inside a worker, to find where lost messages went (chaos tooling).

``install(path)`` patches Faust's consumer to append one JSON line per event to ``path``, for the
worker's input topics only:

* ``assign`` — a new generation's partitions;
* ``seek`` — the committed offsets a seek went back to;
* ``gap`` — offsets ``first``…``last`` of a partition that Faust took for a gap (removed by compaction
  or transaction markers) and acked without delivering them;
* ``cleared`` — agent queues cleared when the flow resumed: per partition, first and last offset and
  how many records were dropped;
* ``commit`` — the offsets Faust commits.

``read_trace``, ``contiguous_runs`` and ``explain`` turn the traces and a list of lost positions into
one line per lost run: which worker acked it as a gap, cleared it from a queue, committed past it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable, TextIO


def _input(tp: Any) -> bool:
    return not tp.topic.endswith("-changelog") and "__assignor" not in tp.topic


def _name(tp: Any) -> str:
    return f"{tp.topic}/{tp.partition}"


def install(path: Path, seek_delay_s: float = 0.0) -> None:
    """Trace to ``path``. ``seek_delay_s`` makes each seek to the committed offsets that much slower
    (a busy consumer thread does the same), which widens the window of the issue-4 race."""
    from faust.transport.consumer import Consumer, ThreadDelegateConsumer
    from mode.utils.queues import FlowControlEvent

    out: TextIO = open(path, "a", buffering=1)

    def write(kind: str, **fields: Any) -> None:
        out.write(json.dumps({"t": round(time.time(), 3), "kind": kind, **fields}) + "\n")

    def wrap(cls: type, name: str, before: Callable[..., None]) -> None:
        original = getattr(cls, name)

        async def traced(self: Any, *args: Any, **kwargs: Any) -> Any:
            before(self, *args)
            return await original(self, *args, **kwargs)

        setattr(cls, name, traced)

    wrap(Consumer, "_commit_offsets", lambda self, offsets, *_: write(
        "commit", offsets={_name(tp): o for tp, o in offsets.items() if _input(tp)}))
    wrap(Consumer, "_add_gap", lambda self, tp, first, last: _input(tp) and write(
        "gap", tp=_name(tp), first=first, last=last, committed=self._committed_offset.get(tp)))
    wrap(Consumer, "on_partitions_assigned", lambda self, assigned, *_: write(
        "assign", generation=self.app.consumer_generation_id, tps=sorted(_name(tp) for tp in assigned if _input(tp))))

    seek_to_committed = ThreadDelegateConsumer.seek_to_committed

    async def traced_seek(self: Any) -> Any:
        if seek_delay_s:
            await asyncio.sleep(seek_delay_s)
        committed = await seek_to_committed(self)
        write("seek", committed={_name(tp): o for tp, o in committed.items() if _input(tp)})
        return committed

    ThreadDelegateConsumer.seek_to_committed = traced_seek
    clear = FlowControlEvent.clear

    def traced_clear(self: Any) -> None:
        dropped: dict[str, list[int]] = {}
        for queue in self._queues:
            for item in list(getattr(queue, "_queue", ())):
                message = getattr(item, "message", None)
                if message is not None and _input(message.tp):
                    first, last, n = dropped.get(_name(message.tp), (message.offset, message.offset, 0))
                    dropped[_name(message.tp)] = [min(first, message.offset), max(last, message.offset), n + 1]
        if dropped:
            write("cleared", dropped=dropped)
        clear(self)

    FlowControlEvent.clear = traced_clear


def read_trace(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def gaps_by_topic(traces: dict[str, list[dict]]) -> dict[str, dict[str, int]]:
    """Per worker, how many gaps Faust acked on each input topic (0 everywhere when nothing is lost)."""
    return {name: dict(Counter(_topic(e["tp"]) for e in events if e["kind"] == "gap"))
            for name, events in traces.items()}


def contiguous_runs(positions: list[tuple[str, int, int]]) -> dict[str, list[tuple[int, int]]]:
    """``{"topic/partition": [(first, last), ...]}`` of the given positions."""
    by_partition: dict[str, list[int]] = defaultdict(list)
    for topic, partition, offset in positions:
        by_partition[f"{topic}/{partition}"].append(offset)
    runs: dict[str, list[tuple[int, int]]] = {}
    for name, offsets in sorted(by_partition.items()):
        offsets.sort()
        spans = [[offsets[0], offsets[0]]]
        for offset in offsets[1:]:
            if offset == spans[-1][1] + 1:
                spans[-1][1] = offset
            else:
                spans.append([offset, offset])
        runs[name] = [(first, last) for first, last in spans]
    return runs


def _topic(tp: str) -> str:
    """``"<prefix>.health/3"`` → ``"health"``."""
    return tp.rsplit("/", 1)[0].rsplit(".", 1)[-1]


def explain(runs: dict[str, list[tuple[int, int]]], traces: dict[str, list[dict]]) -> list[str]:
    """For each lost run: which worker's trace saw it acked as a gap, cleared from a queue, committed."""
    lines = []
    for tp, spans in runs.items():
        for first, last in spans:
            seen = []
            for worker, events in traces.items():
                for e in events:
                    if e["kind"] == "gap" and e["tp"] == tp and e["first"] <= last and e["last"] >= first:
                        seen.append(f"{worker} acked {e['first']}-{e['last']} as a gap (committed {e['committed']})")
                    elif e["kind"] == "cleared" and tp in e["dropped"]:
                        lo, hi, n = e["dropped"][tp]
                        if lo <= last and hi >= first:
                            seen.append(f"{worker} cleared {n} queued records {lo}-{hi}")
                passed = next((e for e in events if e["kind"] == "commit" and e["offsets"].get(tp, -1) > last), None)
                if passed is not None:
                    seen.append(f"{worker} committed {passed['offsets'][tp]} at {passed['t']}")
            lines.append(f"{tp} {first}-{last} ({last - first + 1}): " + ("; ".join(seen) or "not in any trace"))
    return lines
