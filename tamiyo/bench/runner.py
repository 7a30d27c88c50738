"""``tamiyo bench``: run the benchmarks in one go and write results.json + results.md.

Order: CPU-only benchmarks first (no broker running), then one broker for all Kafka benchmarks.
``only`` picks benchmarks by group name (``policy``, ``replay``, ``broker``, ``ingest``, ``ingest_single``,
``ingest_shapes``, ``naive``, ``ceiling``, ``decision``, ``scaleout``, ``learning``) or by metric name.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tamiyo.bench.harness import Results, Target, progress, write_results

#: group -> the metrics it produces (for ``only`` by metric name, and for error reporting)
GROUPS: dict[str, tuple[str, ...]] = {
    "policy_single": ("policy_single_p50_ms", "policy_single_p99_ms"),
    "policy_batched": ("policy_batched_graphs_per_s", "pyg_batch_baseline_graphs_per_s", "policy_batched_vs_pyg_ratio"),
    "broker": ("broker_consume_per_s",),
    "ingest": ("ingest_signals_per_s", "ingest_worker_cpu_us_per_signal"),
    "ingest_single": ("ingest_single_signals_per_s", "ingest_single_worker_cpu_us_per_signal"),
    "ingest_shapes": ("ingest_signals_per_s_1_report", "ingest_signals_per_s_2_reports"),
    "naive": ("naive_faust_per_s", "ingest_vs_naive_ratio"),
    "ceiling": ("faust_delivery_ceiling_per_s",),
    "decision": ("decision_latency_p50_ms", "decision_latency_p99_ms", "decision_latency_p50_ms_100",
                 "decision_latency_p99_ms_100"),
    "replay": ("replay_records_per_s",),
    "scaleout": ("scaleout_two_workers_per_s",),
    "learning": ("learning_loop_latency_s",),
    "proof": ("return_learned", "return_behaviour", "return_heuristic", "return_never_adapt",
              "ope_estimate_learned", "return_learned_real_host", "return_behaviour_real_host",
              "return_heuristic_real_host", "return_never_adapt_real_host"),
}
ALIASES = {"policy": ("policy_single", "policy_batched")}
CPU_ONLY = ("policy_single", "policy_batched")


@dataclass
class BenchConfig:
    """Sizes of every benchmark; ``quick()`` is the reduced version the smoke test runs."""

    runs: int = 3
    ingest: Any = None
    policy: Any = None
    replay: Any = None
    decision: Any = None
    learning: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from tamiyo.bench.decision import DecisionConfig
        from tamiyo.bench.ingest import IngestConfig
        from tamiyo.bench.learning import LearningConfig
        from tamiyo.bench.policy import PolicyConfigBench
        from tamiyo.bench.replay import ReplayConfig

        self.ingest = self.ingest or IngestConfig(runs=self.runs)
        self.policy = self.policy or PolicyConfigBench(runs=self.runs)
        self.replay = self.replay or ReplayConfig(runs=max(self.runs, ReplayConfig.runs))  # a run is ~0.25 s
        self.decision = self.decision or DecisionConfig(runs=self.runs)
        self.learning = self.learning or LearningConfig(runs=self.runs)

    @classmethod
    def quick(cls) -> "BenchConfig":
        """A few seconds per benchmark: for tests, never for the published figures."""
        from tamiyo.bench.ingest import IngestConfig
        from tamiyo.bench.policy import PolicyConfigBench
        from tamiyo.bench.replay import ReplayConfig

        return cls(runs=3, ingest=IngestConfig(runs=3, models=50, signals=3000, shape_signals=3000),
                   policy=PolicyConfigBench(runs=3, single_calls=100, single_warmup=20, batch_sizes=(32, 64),
                                            graphs_per_run=256),
                   replay=ReplayConfig(runs=3, models=10, epochs=6))


class CpuUsage:
    """CPU seconds the rest of the machine used between construction and ``other_cpus()``:
    all busy CPU time minus this process, its (waited-for) children and the broker."""

    def __init__(self, broker_pid: int | None = None) -> None:
        self.broker_pid = broker_pid
        self.t0 = time.monotonic()
        self.start = self._snapshot()

    def _snapshot(self) -> tuple[float, float] | None:
        try:
            import psutil

            total = psutil.cpu_times()
            busy = sum(total) - total.idle - getattr(total, "iowait", 0.0)
            me = psutil.Process()
            mine = sum(me.cpu_times()[:4])  # user, system, children_user, children_system
            for child in me.children(recursive=True):
                try:
                    mine += sum(child.cpu_times()[:2])
                except psutil.Error:
                    pass
            if self.broker_pid and not any(c.pid == self.broker_pid for c in me.children(recursive=True)):
                try:
                    mine += sum(psutil.Process(self.broker_pid).cpu_times()[:2])
                except psutil.Error:
                    pass
            return busy, mine
        except Exception:
            return None

    def other_cpus(self) -> float | None:
        end = self._snapshot()
        wall = time.monotonic() - self.t0
        if self.start is None or end is None or wall <= 0:
            return None
        other = (end[0] - self.start[0]) - (end[1] - self.start[1])
        return round(max(other, 0.0) / wall, 2)


def _keep_other_groups(results: Results, out_path: Path, ran: list[str]) -> None:
    """With ``only``: metrics of the groups that did not run are kept from the existing results file
    (with their own ``measured_at``), so one group can be re-measured without losing the rest."""
    import json

    try:
        old = json.loads(out_path.read_text())
    except (OSError, ValueError):
        return
    fresh = {m for g in ran for m in GROUPS[g]}
    kept = []
    for name, metric in (old.get("metrics") or {}).items():
        if name in fresh or name in results.metrics:
            continue
        metric = dict(metric)
        target = metric.pop("target", None)
        metric.pop("target_value", None)
        metric.pop("pass", None)
        results.metrics[name] = metric
        if target:
            op, _, rest = target.partition(" ")
            number, _, ref = rest.partition("× ")
            try:
                results.targets[name] = Target(op, float(number.replace(",", "")), ref or None)
            except ValueError:
                pass
        kept.append(name)
    for name, reason in (old.get("not_measured") or {}).items():
        if name not in fresh and name not in results.metrics and name not in results.missing:
            results.missing[name] = reason
    if kept:
        results.note(f"kept from the previous results file (not re-run): {', '.join(kept)}")


def selected(only: list[str] | None) -> list[str]:
    """Groups to run, in run order."""
    if not only:
        return list(GROUPS)
    wanted: set[str] = set()
    for name in only:
        if name in ALIASES:
            wanted.update(ALIASES[name])
        elif name in GROUPS:
            wanted.add(name)
        else:
            group = next((g for g, metrics in GROUPS.items() if name in metrics), None)
            if group is None:
                raise ValueError(f"unknown benchmark {name!r}; groups: {', '.join([*ALIASES, *GROUPS])}")
            wanted.add(group)
    return [g for g in GROUPS if g in wanted]


def run_bench(out_path: str | Path, only: list[str] | None = None, config: BenchConfig | None = None) -> dict:
    """Run the selected benchmarks (all by default) and write ``out_path`` (JSON) and its ``.md`` twin.

    Returns the results dict (the content of results.json). A benchmark that fails is reported in
    ``not_measured`` with its error; the others still run.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    config = config or BenchConfig()
    groups = selected(only)
    results = Results()
    started = time.monotonic()
    env_holder: dict[str, Any] = {}
    if only:
        _keep_other_groups(results, Path(out_path), groups)
    progress(f"benchmarks: {', '.join(groups)}; {config.runs} runs each; writing {out_path}")

    def attempt(group: str, fn: Callable[[], None]) -> None:
        t0 = time.monotonic()
        progress(f"== {group}")
        before = set(results.metrics)
        usage = CpuUsage(broker_pid=getattr(getattr(env_holder.get("env"), "broker", None), "pid", None))
        try:
            fn()
        except Exception as exc:  # one broken benchmark must not lose the others' figures
            traceback.print_exc()
            for metric in GROUPS[group]:
                if metric not in results.metrics:
                    results.skip(metric, f"{group} benchmark failed: {type(exc).__name__}: {exc}"[:500])
        other = usage.other_cpus()
        for name in set(results.metrics) - before:
            results.metrics[name]["other_processes_cpus"] = other
        if other is not None and other > 0.25:
            progress(f"   note: other processes kept {other:.2f} of {os.cpu_count()} CPUs busy during {group}")
        progress(f"== {group} done in {time.monotonic() - t0:.0f}s")
        write_results(results, out_path)  # partial results survive an interrupted run

    from tamiyo.bench import decision, ingest, learning, policy, replay

    for group in [g for g in groups if g in CPU_ONLY]:
        fn = policy.bench_single if group == "policy_single" else policy.bench_batched
        attempt(group, lambda fn=fn: fn(results, config.policy))
    if "proof" in groups:
        from tamiyo.bench.proof import bench_proof

        attempt("proof", lambda: bench_proof(results))
    kafka_groups = [g for g in groups if g not in CPU_ONLY and g != "proof"]
    if kafka_groups:
        from tamiyo.bench.env import BenchEnv

        with BenchEnv() as env:
            env_holder["env"] = env
            results.note(f"broker: {env.broker_kind}")
            table: dict[str, Callable[[], None]] = {
                "broker": lambda: ingest.bench_broker_consume(env, results, config.ingest),
                "ingest": lambda: ingest.bench_ingest(env, results, config.ingest),
                "ingest_single": lambda: ingest.bench_ingest_single(env, results, config.ingest),
                "ingest_shapes": lambda: ingest.bench_ingest_shapes(env, results, config.ingest),
                "naive": lambda: ingest.bench_naive(env, results, config.ingest),
                "ceiling": lambda: ingest.bench_ceiling(env, results, config.ingest),
                "decision": lambda: decision.bench_decision(env, results, config.decision),
                "replay": lambda: replay.bench_replay(env, results, config.replay),
                "scaleout": lambda: ingest.bench_scaleout(env, results, config.ingest),
                "learning": lambda: learning.bench_learning(env, results, config.learning),
            }
            for group in kafka_groups:
                attempt(group, table[group])
    elapsed = time.monotonic() - started
    order = [m for g in GROUPS for m in GROUPS[g]]
    results.metrics = dict(sorted(results.metrics.items(),
                                  key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    results.note("other_processes_cpus: CPUs (of the machine's "
                 f"{os.cpu_count()}) used by processes outside this bench while a figure was measured; "
                 "figures measured next to other work are pessimistic")
    results.note(f"whole bench: {elapsed:.0f} s; every figure is the median of its runs (min and max beside it)")
    data = write_results(results, out_path)
    progress(f"wrote {out_path} and {Path(out_path).with_suffix('.md')} in {elapsed:.0f}s")
    return data


__all__ = ["BenchConfig", "GROUPS", "Results", "Target", "run_bench", "selected"]
