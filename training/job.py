"""The training job: replay -> episodes -> split -> learner -> fitted Q -> OPE -> MLflow -> gate.

``train(settings, cfg)`` reads like the pipeline; ``train_on_transitions`` is everything after the
replay, for tests and benchmarks without Kafka. Everything it logs to MLflow is visible in
``_log_run``: the config as params, the data window, per-epoch metrics, the OPE table and
metrics, two figures, and the registered version's gate verdict.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

from tamiyo.config import Settings
from training.episodes import (COMMANDS_UNDECODED, EPISODE_TYPES, RewardConfig, Transition, group_episodes,
                               redecided_ids, transitions, unmatched_ids)
from training.gate import GateConfig, GateVerdict, judge
from training.ope import OPEReport
from training.registry import PolicyRegistry, configure_client_env, ensure_experiment

# torch, torch_geometric and mlflow take seconds to import: the modules that need them are imported
# inside the functions below, so that building the CLI parser (which reads TrainConfig) stays fast.

log = logging.getLogger(__name__)

ESTIMATORS = ("ips", "snips", "dr")


def _help(text: str, default: Any) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass
class TrainConfig:
    """Every knob of one training run (the CLI builds its flags from these fields and help texts)."""

    learner: str = _help("offline learner: 'lcbq' (pessimistic fitted-Q policy extraction; the one the demo and "
                         "the learning proof use), 'awr' (advantage-weighted regression) or 'bc' (behaviour "
                         "cloning)", "lcbq")
    epochs: int = _help("policy passes over the training transitions", 30)
    lr: float = _help("Adam learning rate (policy, baseline and Q)", 1e-3)
    batch_size: int = _help("graphs per mini-batch", 64)
    hidden_dim: int = _help("GNN width of the policy, baseline and Q networks", 64)
    seed: int = _help("seeds the split, initialisation, shuffling and the bootstrap", 0)
    awr_beta: float = _help("AWR temperature on standardised advantages (smaller = greedier)", 0.5)
    awr_max_weight: float = _help("AWR cap on exp(A / beta)", 20.0)
    value_epochs: int = _help("AWR baseline V(s) epochs", 20)
    lcbq_members: int = _help("lcbq: Q-networks in the bootstrap ensemble", 4)
    lcbq_kappa: float = _help("lcbq: act on mean - kappa * sd of the members' advantages over WAIT", 1.0)
    lcbq_temperature: float = _help("lcbq: policy = softmax(LCB advantage / temperature), reward units", 0.005)
    q_epochs: int = _help("epochs of the fitted Q used by the DR estimator (lcbq brings its own critic)", 30)
    # reward join (training.episodes.RewardConfig)
    horizon: int = _help("reward = val_loss[e] - val_loss[e + horizon] - parameter_cost * parameter_delta", 3)
    parameter_cost: float = _help("reward cost per added parameter", 1e-5)
    default_reward: float = _help("reward of a decision whose host died before its outcome", -0.05)
    dead_after_s: float = _help("a run with no record for this long before the data's end counts as dead", 120.0)
    # evaluation and promotion gate
    heldout_fraction: float = _help("fraction of episodes (model, run) held out for off-policy evaluation", 0.3)
    gate_estimator: str = _help("estimator the gate compares: ips, snips or dr", "dr")
    gate_min_ess: float = _help("refuse promotion below this effective sample size of the challenger", 50.0)
    gate_margin: float = _help("challenger's lower bound must beat the champion's estimate by this much", 0.0)
    gate_max_unsupported: float = _help("refuse promotion when more of the challenger's probability than this lies "
                                        "on actions the logged behaviour never took (data without exploration)",
                                        0.05)
    bootstrap_samples: int = _help("bootstrap resamples for the confidence intervals", 500)
    serving_gates: bool = _help("evaluate policies after the serving gates (confidence, epsilon) from Settings", True)
    # data window (None: from the beginning / up to now)
    start_ms: int | None = _help("replay records with timestamp >= this, epoch ms", None)
    end_ms: int | None = _help("replay records with timestamp < this, epoch ms", None)
    start_offsets: dict[int, int] | None = _help(
        "first offset per partition, instead of looking start_ms up (records are still filtered by time)", None)
    end_offsets: dict[int, int] | None = _help(
        "stop offset per partition, exclusive, instead of looking end_ms up", None)
    # registry
    registered_model: str | None = _help("registered model name (default: Settings.registered_model)", None)
    experiment: str = _help("MLflow experiment of the training runs", "tamiyo")
    promote: bool = _help("move the champion alias when the gate passes", True)
    torch_threads: int = _help("torch CPU threads while training (0: torch's default)", 1)
    progress: bool = _help("show progress bars", True)

    def validate(self) -> None:
        from training import learners

        if self.learner not in learners.LEARNERS:
            raise ValueError(f"learner must be one of {sorted(learners.LEARNERS)}, not {self.learner!r}")
        if self.gate_estimator not in ESTIMATORS:
            raise ValueError(f"gate_estimator must be one of {ESTIMATORS}, not {self.gate_estimator!r}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError("heldout_fraction must be in (0, 1)")
        if min(self.epochs, self.batch_size, self.hidden_dim, self.q_epochs, self.bootstrap_samples,
               self.lcbq_members) < 1:
            raise ValueError("epochs, batch_size, hidden_dim, q_epochs, bootstrap_samples and lcbq_members "
                             "must be >= 1")
        if not 0.0 <= self.gate_max_unsupported <= 1.0:
            raise ValueError("gate_max_unsupported must be in [0, 1]")
        if self.lcbq_temperature <= 0 or self.lcbq_kappa < 0:
            raise ValueError("lcbq_temperature must be > 0 and lcbq_kappa >= 0")

    def reward_config(self) -> RewardConfig:
        return RewardConfig(self.horizon, self.parameter_cost, self.default_reward, self.dead_after_s)

    def gate_config(self) -> GateConfig:
        return GateConfig(self.gate_estimator, self.gate_min_ess, self.gate_margin, self.gate_max_unsupported)

    def learner_config(self) -> Any:
        from training import learners

        return learners.make_config(self.learner, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                                    hidden_dim=self.hidden_dim, seed=self.seed, beta=self.awr_beta,
                                    max_weight=self.awr_max_weight, value_epochs=self.value_epochs,
                                    distill_epochs=self.epochs, members=self.lcbq_members, kappa=self.lcbq_kappa,
                                    temperature=self.lcbq_temperature)

    def q_config(self) -> Any:
        from training.qfit import QConfig

        return QConfig(epochs=self.q_epochs, lr=self.lr, batch_size=self.batch_size,
                       hidden_dim=self.hidden_dim, seed=self.seed)

    def params(self) -> dict[str, str]:
        """Flat string params for MLflow."""
        return {f.name: json.dumps(getattr(self, f.name)) if isinstance(getattr(self, f.name), dict)
                else str(getattr(self, f.name)) for f in fields(self)}


@dataclass
class TrainResult:
    version: str  # the registered model version of the challenger
    promoted: bool
    reason: str
    ope: dict[str, OPEReport]  # "challenger", "behaviour", and "champion" when there was one
    ope_table: list[dict[str, Any]]  # one row per (policy, estimator)
    baseline: str  # "champion" or "behaviour": what the gate compared against
    champion_before: str | None  # champion version before this run
    n_transitions: int
    n_train: int
    n_heldout: int
    run_id: str
    history: dict[str, list[float]]
    seconds: dict[str, float] = field(default_factory=dict)


def train(settings: Settings, cfg: TrainConfig) -> TrainResult:
    """Replay the experience topic in the configured window and run the whole job on it."""
    from training.replay import gc_paused, replay

    cfg.validate()
    t0 = time.perf_counter()
    with gc_paused():
        records, window = replay(settings, start_ms=cfg.start_ms, end_ms=cfg.end_ms,
                                 start_offsets=cfg.start_offsets, end_offsets=cfg.end_offsets, progress=cfg.progress,
                                 types=EPISODE_TYPES, undecoded=COMMANDS_UNDECODED)
        episodes = group_episodes(records)
        data_end_ms = data_end(cfg, records)
        steps = transitions(episodes, cfg.reward_config(), data_end_ms)
    log.info("replayed %d records: %d episodes, %d transitions", len(records), len(episodes), len(steps))
    data_window = window.as_dict() | {"episodes": len(episodes), "transitions": len(steps),
                                      "redecided_ids": redecided_ids(episodes),
                                      "unmatched_ids": unmatched_ids(episodes), "data_end_ms": data_end_ms}
    result = train_on_transitions(settings, cfg, steps, data_window)
    result.seconds["replay"] = time.perf_counter() - t0 - sum(result.seconds.values())
    return result


def data_end(cfg: TrainConfig, records: list[Any]) -> int:
    """The time "dead" hosts are judged against (ms): the window's end time; with end offsets, the
    newest record read (a run silent since then is not dead only because the window is old); else now."""
    if cfg.end_ms is not None:
        return cfg.end_ms
    if cfg.end_offsets:
        return max((record.timestamp_ms for record in records), default=int(time.time() * 1000))
    return int(time.time() * 1000)


def train_on_transitions(
    settings: Settings,
    cfg: TrainConfig,
    steps: list[Transition],
    data_window: dict[str, Any] | None = None,
) -> TrainResult:
    """Split, fit, evaluate against the champion, log, register and judge one challenger."""
    from training import learners
    from training.dataset import TransitionDataset, split_by_episode
    from training.evaluation import ope_of
    from training.qfit import fit_q
    from training.replay import gc_paused

    cfg.validate()
    configure_client_env()
    seconds: dict[str, float] = {}
    with _torch_threads(cfg.torch_threads), _timed(seconds, "fit"):
        with gc_paused():
            data = TransitionDataset.from_transitions(steps)
        if len(data) == 0:
            raise ValueError(f"no usable transitions (of {len(steps)}; skipped: {data.skipped})")
        train_set, heldout = split_by_episode(data, cfg.heldout_fraction, cfg.seed)
        log.info("training %s on %d transitions, evaluating on %d held-out", cfg.learner, len(train_set), len(heldout))
        fitted = learners.fit(cfg.learner, train_set, cfg.learner_config(), progress=cfg.progress)
        if fitted.q_model is not None:  # the learner's own critic, fitted on the same training split
            q_model, q_history = fitted.q_model, {}
        else:
            q_model, q_history = fit_q(train_set, cfg.q_config(), progress=cfg.progress)

    registry = PolicyRegistry(settings.tracking_uri, cfg.registered_model or settings.registered_model)
    with _torch_threads(cfg.torch_threads), _timed(seconds, "evaluate"), tempfile.TemporaryDirectory() as tmp:
        serving = _serving_gate(settings) if cfg.serving_gates else None
        score = dict(serving_gate=serving, bootstrap=cfg.bootstrap_samples, seed=cfg.seed)
        reports = {"challenger": ope_of(fitted.policy, heldout, q_model, **score),
                   "behaviour": ope_of(None, heldout, q_model, **score)}
        champion_before, champion = _load_champion(registry, Path(tmp))
        if champion is not None:
            reports["champion"] = ope_of(champion, heldout, q_model, **score)
    baseline = "champion" if "champion" in reports else "behaviour"
    verdict = judge(reports["challenger"], reports[baseline], cfg.gate_config())
    if champion_before is not None and champion is None:
        verdict = dataclasses.replace(verdict, reason=f"champion v{champion_before} could not be loaded, compared "
                                                      f"with the behaviour policy: {verdict.reason}")

    history = {f"{cfg.learner}/{k}": v for k, v in fitted.history.items()} | q_history
    table = ope_table(reports, {"champion": champion_before})
    stats = (fitted.stats | {f"data/train_{k}": v for k, v in train_set.summary().items()}
             | {f"data/heldout_{k}": v for k, v in heldout.summary().items()})
    window = data_window or {"source": "transitions passed in memory", "transitions": len(steps)}
    with _timed(seconds, "mlflow"):
        run_id, version, promoted, reason = _log_run(registry, settings, cfg, fitted.policy, history, table,
                                                     reports, verdict, baseline, window, stats, champion_before)
    log.info("challenger v%s: %s (%s)", version, "promoted" if promoted else "not promoted", reason)
    return TrainResult(version=version, promoted=promoted, reason=reason, ope=reports, ope_table=table,
                       baseline=baseline, champion_before=champion_before, n_transitions=len(data),
                       n_train=len(train_set), n_heldout=len(heldout), run_id=run_id, history=history,
                       seconds=seconds)


def _log_run(
    registry: PolicyRegistry,
    settings: Settings,
    cfg: TrainConfig,
    policy: Any,
    history: dict[str, list[float]],
    table: list[dict[str, Any]],
    reports: dict[str, OPEReport],
    verdict: GateVerdict,
    baseline: str,
    data_window: dict[str, Any],
    stats: dict[str, float],
    champion_before: str | None,
) -> tuple[str, str, bool, str]:
    """One MLflow run: params, data window, curves, OPE, figures; then register and gate."""
    import mlflow

    from models.checkpoint import save_policy
    from training.plots import learning_curves, ope_intervals

    mlflow.set_tracking_uri(settings.tracking_uri)
    experiment_id = ensure_experiment(settings.tracking_uri, cfg.experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{cfg.learner}-seed{cfg.seed}") as run:
        run_id = run.info.run_id
        mlflow.log_params(cfg.params())
        mlflow.log_dict(data_window, "data_window.json")
        longest = max((len(v) for v in history.values()), default=0)
        for epoch in range(longest):
            mlflow.log_metrics({name: values[epoch] for name, values in history.items() if epoch < len(values)},
                               step=epoch)
        mlflow.log_metrics({k: float(v) for k, v in stats.items()})
        mlflow.log_table({key: [row[key] for row in table] for key in table[0]}, artifact_file="ope/table.json")
        mlflow.log_metrics({f"ope/{row['policy']}/{row['name']}{suffix}": row[key]
                            for row in table for key, suffix in (("value", ""), ("low", "_low"), ("high", "_high"))}
                           | {f"ope/{name}/ess": r.effective_sample_size for name, r in reports.items()}
                           | {f"ope/{name}/max_weight": r.max_weight for name, r in reports.items()}
                           | {f"ope/{name}/unsupported_mass": r.unsupported_mass for name, r in reports.items()})
        mlflow.log_figure(learning_curves(history, f"{cfg.learner} learning curves"), "plots/learning_curves.png")
        mlflow.log_figure(ope_intervals(reports), "plots/ope.png")

        with tempfile.TemporaryDirectory() as tmp:
            save_policy(policy, Path(tmp))
            version = registry.register(Path(tmp), run_id, tags={
                "learner": cfg.learner, "baseline": baseline,
                "heldout_transitions": str(reports["challenger"].n),
                **{f"ope_{name}": f"{e.value:.6g}" for name, e in reports["challenger"].estimates.items()}})
        promoted, reason = False, verdict.reason
        if verdict.promote and cfg.promote:
            promoted, reason = _promote_checked(registry, version, verdict.reason, f"training run {run_id}",
                                                champion_before)
        elif verdict.promote:
            reason = f"{verdict.reason} (passed the gate; promotion disabled)"
            registry.client.set_model_version_tag(registry.name, version, "gate", "passed")
            registry.client.set_model_version_tag(registry.name, version, "gate_reason", reason)
        else:
            registry.reject(version, verdict.reason)
        mlflow.set_tags({"registered_model": registry.name, "registered_version": version,
                         "gate.baseline": baseline, "gate.promoted": str(promoted), "gate.reason": reason[:5000]})
    return run_id, version, promoted, reason


def _promote_checked(registry: PolicyRegistry, version: str, reason: str, by: str,
                     champion_before: str | None) -> tuple[bool, str]:
    """Promote a version that passed the gate, unless workers could not load it (the checks
    ``tamiyo promote`` makes: shapes, finite weights, smoke inference) or the champion it was
    compared with has been replaced meanwhile. Returns (promoted, reason); a refusal is tagged."""
    from models.checkpoint import IncompatiblePolicyError
    from training.registry import ChampionMoved

    try:
        registry.validate(version)
    except IncompatiblePolicyError as exc:
        refused = f"passed the gate but workers could not load it: {exc}"
        registry.reject(version, refused)
        return False, refused
    try:
        registry.promote(version, reason, by=by, expected_champion=champion_before)
    except ChampionMoved as exc:
        refused = f"passed the gate but was not promoted: {exc}"
        registry.reject(version, refused)
        return False, refused
    return True, reason


def ope_table(reports: dict[str, OPEReport], versions: dict[str, str | None] | None = None) -> list[dict[str, Any]]:
    """Rows {policy, version, name, value, low, high, ess, max_weight, n} for every policy and estimator."""
    versions = versions or {}
    return [{"policy": policy, "version": versions.get(policy) or ""} | row
            for policy, report in reports.items() for row in report.as_rows()]


def _load_champion(registry: PolicyRegistry, destination: Path) -> tuple[str | None, Any]:
    """(champion version, loaded policy). An unloadable champion (e.g. an older feature spec) is
    reported and the baseline falls back to the behaviour policy: it must not block a replacement."""
    from models.checkpoint import IncompatiblePolicyError

    ref = registry.champion()
    if ref is None:
        return None, None
    try:
        return ref.version, registry.load(ref.version, destination)
    except IncompatiblePolicyError as exc:
        log.warning("champion v%s cannot be loaded (%s); comparing against the behaviour policy", ref.version, exc)
        return ref.version, None


def _serving_gate(settings: Settings) -> Any:
    from models.decide import GateConfig as ServingGate

    return ServingGate(confidence_threshold=settings.confidence_threshold, cooldown_epochs=settings.cooldown_epochs,
                       max_adaptations_per_epoch=settings.max_adaptations_per_epoch,
                       epsilon=settings.exploration_epsilon)


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Small graphs train faster on one thread, and far faster when other processes share the cores."""
    import torch

    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def _timed(seconds: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - start
