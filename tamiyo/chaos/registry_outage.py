"""Scenario 5 — registry outage: the MLflow server stops while the worker serves its champion.

A real ``mlflow server`` (sqlite backend, proxied artifacts) holds the policies; the worker runs with
``TAMIYO_POLICY=champion``. Phases: v1 is promoted and served; the server is stopped (``quick``: frozen
with SIGSTOP, so requests hang instead of being refused) — the worker keeps
deciding with v1 and logs the outage once; the server comes back, v2 is registered and promoted — the
worker swaps to it (decisions carry ``.../v2``); then three bad versions are promoted one after the
other — corrupt weights, a pickle payload (weights-only loading refuses it; a marker shows it never
ran), an incompatible feature spec — and each is refused while v2 keeps serving.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from tamiyo.chaos.harness import ChaosEnv, ChildProcess, FleetThread, Observer, audit, progress, wait_until
from tamiyo.chaos.report import scenario_result

POLL_SECONDS = 1.0
T = TypeVar("T")


@contextlib.contextmanager
def _client_env(**values: str) -> Iterator[None]:
    """MLflow client settings for this process only while the scenario runs (the trainer side may wait)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _retry(call: Callable[[], T], attempts: int = 4, pause_s: float = 2.0) -> T:
    """Registry writes right after a server start can time out while it warms up: try again."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception:
            if attempt == attempts - 1:
                raise
            time.sleep(pause_s)
    raise AssertionError("unreachable")


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return response.status == 200
    except Exception:
        return False


def start_mlflow(env: ChaosEnv, workdir: Path, port: int, name: str = "mlflow-server") -> ChildProcess:
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    args = [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
            "--artifacts-destination", str(workdir / "artifacts"), "--workers", "1"]
    child_env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
    return env.start_command(args, child_env, workdir / f"{name}.log", name)


class _Payload:
    """Unpickling this would create ``path`` (a directory): the marker that pickle code ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (os.makedirs, (self.path,))


def bad_policies(base: Path, good: Path, marker: Path) -> dict[str, Path]:
    """Three versions a worker must refuse, each a copy of the good checkpoint with one defect."""
    import shutil

    import torch

    out = {}
    corrupt = base / "corrupt"
    shutil.copytree(good, corrupt)
    (corrupt / "state_dict.pt").write_bytes(os.urandom(4096))
    out["corrupt_weights"] = corrupt
    pickled = base / "pickle_payload"
    shutil.copytree(good, pickled)
    state = torch.load(good / "state_dict.pt", weights_only=True)
    state["payload"] = _Payload(str(marker))
    torch.save(state, pickled / "state_dict.pt")
    out["pickle_payload"] = pickled
    incompatible = base / "incompatible"
    shutil.copytree(good, incompatible)
    spec = json.loads((incompatible / "feature_spec.json").read_text())
    spec["feature_spec_version"] = f"{spec.get('feature_spec_version')}-from-the-future"
    spec["kernels"] = list(spec["kernels"]) + ["kernel_from_the_future"]
    (incompatible / "feature_spec.json").write_text(json.dumps(spec))
    out["incompatible_spec"] = incompatible
    return out


def run(env: ChaosEnv, quick: bool = False, seed: int = 0) -> dict[str, Any]:
    with _client_env(MLFLOW_HTTP_REQUEST_TIMEOUT="60", MLFLOW_HTTP_REQUEST_MAX_RETRIES="2",
                     MLFLOW_DISABLE_TELEMETRY="true"):
        return _run(env, quick, seed)


def _run(env: ChaosEnv, quick: bool, seed: int) -> dict[str, Any]:
    import torch

    from models.checkpoint import save_policy
    from models.policy import PolicyConfig, TamiyoPolicyGNN
    from tamiyo.broker.apache import free_port
    from training.registry import PolicyRegistry

    started = time.monotonic()
    outage_s = 6.0 if quick else 20.0
    freeze = quick
    settings = env.settings("registry_outage", partitions=2)
    workdir = settings.data_dir / "registry"
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    name = f"{settings.topic_prefix}-policy"
    server = start_mlflow(env, workdir, port)
    observer = Observer(settings)
    observer.start()
    worker = env.start_worker(settings, TAMIYO_POLICY="champion", MLFLOW_TRACKING_URI=uri,
                              TAMIYO_REGISTERED_MODEL=name, TAMIYO_CHAMPION_POLL_SECONDS=str(POLL_SECONDS),
                              MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="3")
    wait_until(lambda: _healthy(port), 120, 0.5, "mlflow server healthy", server.alive)
    registry = PolicyRegistry(uri, name)

    def policy_dir(tag: str, seed_: int) -> Path:
        torch.manual_seed(seed_)
        directory = workdir / "policies" / tag
        save_policy(TamiyoPolicyGNN(PolicyConfig(hidden_dim=16)).eval(), directory)
        return directory

    v1 = _retry(lambda: registry.register(policy_dir("v1", seed + 1), None, tags={"chaos": "v1"}))
    _retry(lambda: registry.promote(v1, "chaos: first champion"))
    worker.wait_ready()
    fleet = FleetThread(settings, models=8 if quick else 20, epoch_interval_s=0.4, seed=seed, epochs_per_run=1000)
    fleet.start()
    v1_name = registry.version_string(v1)
    progress(f"registry_outage: worker ready, {v1_name} promoted")
    wait_until(lambda: observer.first_decision_after(0.0, lambda d: d.policy_version == v1_name) is not None, 120,
               what=f"decisions by {v1_name}", alive=worker.alive)

    # Outage: the registry disappears (full: the server is stopped and started again; quick: it is
    # frozen with SIGSTOP, so requests hang until the client's timeout, then thawed with SIGCONT).
    outage_from = time.monotonic()
    if freeze:
        os.killpg(server.pid, signal.SIGSTOP)
    else:
        server.stop(30)
    time.sleep(outage_s)
    during = observer.decisions_since(outage_from + 0.5)
    outage_logged = "registry unavailable" in worker.log()
    progress(f"registry_outage: {len(during)} decisions while the registry was down")
    if freeze:
        os.killpg(server.pid, signal.SIGCONT)
        restart = server
    else:
        restart = start_mlflow(env, workdir, port, "mlflow-server-2")
    wait_until(lambda: _healthy(port), 120, 0.5, "mlflow server healthy again", restart.alive)
    outage_total_s = time.monotonic() - outage_from
    during_all = observer.decisions_since(outage_from + 0.5)

    # Back: a new champion is picked up.
    v2 = _retry(lambda: registry.register(policy_dir("v2", seed + 2), None, tags={"chaos": "v2"}))
    promoted_at = time.monotonic()
    _retry(lambda: registry.promote(v2, "chaos: second champion"))
    v2_name = registry.version_string(v2)
    wait_until(lambda: observer.first_decision_after(promoted_at, lambda d: d.policy_version == v2_name) is not None,
               60, what=f"decisions by {v2_name}", alive=worker.alive)
    swap_s = observer.first_decision_after(promoted_at, lambda d: d.policy_version == v2_name) - promoted_at
    progress(f"registry_outage: registry back after {outage_total_s:.1f}s; {v2_name} served {swap_s:.1f}s after "
             "its promotion")
    recovered_logged = "registry reachable again" in worker.log()

    # Bad versions are refused; v2 keeps serving.
    marker = workdir / "PICKLE-PAYLOAD-RAN"
    refused: dict[str, dict[str, Any]] = {}
    bad_from = time.monotonic()
    for defect, directory in bad_policies(workdir / "policies", workdir / "policies" / "v2", marker).items():
        version = _retry(lambda d=directory, k=defect: registry.register(d, None, tags={"chaos": k}))
        _retry(lambda v=version, k=defect: registry.promote(v, f"chaos: {k}"))
        text = f"refused {registry.version_string(version)}"
        try:
            worker.wait_for_log(text, 30)
            line = next(line for line in worker.log().splitlines() if text in line)
            refused[defect] = {"version": version, "refused": True, "log": line.split("refused", 1)[1][:200].strip()}
        except (TimeoutError, RuntimeError):
            refused[defect] = {"version": version, "refused": False}
    time.sleep(2 * POLL_SECONDS)
    after_bad = observer.decisions_since(bad_from)
    stats = fleet.finish()
    result, _ = audit(observer, settings, {}, timeout=60)
    alive = worker.alive()
    observer.stop()
    worker.stop()
    restart.stop()

    outage_versions = sorted({d.policy_version for d in during_all})
    after_bad_versions = sorted({d.policy_version for d in after_bad})
    checks = {
        "worker_alive": alive,
        "kept_deciding_during_outage": len(during) > 0,
        "outage_decisions_by_current_policy": outage_versions == [v1_name],
        "outage_logged": outage_logged,
        "new_champion_served_after_outage": True,  # wait_until above raised otherwise
        "bad_versions_refused": all(r["refused"] for r in refused.values()),
        "kept_serving_v2_after_refusals": after_bad_versions == [v2_name] and len(after_bad) > 0,
        "pickle_payload_never_ran": not marker.exists(),
        "no_input_lost": result.lost == 0,
    }
    return scenario_result(
        checks, lost=result.lost, crashes=1, duplicate_applies=result.duplicate_applies,
        recovery_seconds={"registry_new_champion": round(swap_s, 1)},
        outage_kind="server frozen (SIGSTOP/SIGCONT)" if freeze else "server stopped and restarted",
        registry_outage_seconds=round(outage_total_s, 1),
        decisions_during_outage=len(during_all),
        versions_during_outage=outage_versions,
        outage_logged=outage_logged,
        recovery_logged=recovered_logged,
        promotion_to_first_decision_s=round(swap_s, 1),
        champion_poll_seconds=POLL_SECONDS,
        refused_versions=refused,
        versions_after_refusals=after_bad_versions,
        decisions=result.decisions,
        fleet=stats.as_dict() if stats else None,
        seconds=round(time.monotonic() - started, 1),
    )
