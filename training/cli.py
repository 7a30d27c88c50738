"""Training sub-commands of the ``tamiyo`` CLI: train, promote, rollback, replay.

Wire them into ``tamiyo/cli.py``'s ``build_parser``::

    from training.cli import add_training_commands
    add_training_commands(sub, _common, _settings)

``train`` takes one flag per :class:`training.job.TrainConfig` field (``--learner``, ``--epochs``,
``--gate-min-ess``, ``--start``/``--end`` ...), with the field's help text. Heavy imports (torch,
mlflow) happen inside the commands, so building the parser stays fast.
"""

from __future__ import annotations

import argparse
import sys
import typing
from collections import Counter
from dataclasses import fields
from datetime import datetime, timezone
from typing import Any, Callable

from tamiyo.config import Settings, settings_from_args

#: TrainConfig fields whose flag name differs from the field name.
_FLAG_NAMES = {"start_ms": "start", "end_ms": "end"}


# --------------------------------------------------------------------------- commands


def cmd_train(settings: Settings, cfg: Any, out: typing.TextIO | None = None) -> Any:
    """Run the training job (``training.job.train``) and print its OPE table and verdict."""
    out = out or sys.stdout
    from training.job import train

    result = train(settings, cfg)
    print(f"trained {cfg.learner} on {result.n_train} transitions, evaluated on {result.n_heldout} held-out "
          f"({result.n_transitions} total); MLflow run {result.run_id}", file=out)
    print(f"{'policy':<11}{'estimator':<10}{'value':>10}{'low':>10}{'high':>10}{'ESS':>9}", file=out)
    for row in result.ope_table:
        label = row["policy"] + (f" v{row['version']}" if row["version"] else "")
        print(f"{label:<11}{row['name']:<10}{row['value']:>10.4f}{row['low']:>10.4f}{row['high']:>10.4f}"
              f"{row['ess']:>9.1f}", file=out)
    verdict = "PROMOTED to champion" if result.promoted else "not promoted"
    print(f"version {result.version} {verdict} (baseline: {result.baseline}): {result.reason}", file=out)
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()), file=out)
    return result


def cmd_promote(settings: Settings, version: str, reason: str = "manual promotion",
                registered_model: str | None = None, out: typing.TextIO | None = None) -> None:
    """Make ``version`` the champion by hand. The version is downloaded and validated first
    (``registry.validate``), so a corrupt or incompatible policy never reaches the workers."""
    out = out or sys.stdout
    from training.registry import PolicyRegistry, configure_client_env

    configure_client_env()
    registry = PolicyRegistry(settings.tracking_uri, registered_model or settings.registered_model)
    registry.validate(str(version))
    before = registry.champion()
    registry.promote(str(version), reason, by="cli")
    was = f" (was v{before.version})" if before else ""
    print(f"{registry.name}: champion is now v{version}{was}", file=out)


def cmd_rollback(settings: Settings, registered_model: str | None = None, out: typing.TextIO | None = None) -> str:
    """Point ``champion`` back at ``previous``; returns the version now serving."""
    out = out or sys.stdout
    from training.registry import PolicyRegistry, configure_client_env

    configure_client_env()
    registry = PolicyRegistry(settings.tracking_uri, registered_model or settings.registered_model)
    before = registry.champion()
    version = registry.rollback(by="cli")
    was = f" (was v{before.version})" if before else ""
    print(f"{registry.name}: rolled back; champion is now v{version}{was}", file=out)
    return version


def cmd_replay(settings: Settings, start: int | None = None, end: int | None = None,
               reward: Any = None, out: typing.TextIO | None = None) -> dict[str, Any]:
    """Replay the experience topic between two times (epoch ms) and print what training would see:
    records per type, episodes (finished / live / dead), transitions and rewards."""
    out = out or sys.stdout
    import time

    import numpy as np

    from training.episodes import RewardConfig, group_episodes, redecided_ids, transitions, unmatched_ids
    from training.replay import replay

    reward = reward or RewardConfig()
    records, window = replay(settings, start_ms=start, end_ms=end)
    episodes = group_episodes(records)
    data_end_ms = end if end is not None else int(time.time() * 1000)
    steps = transitions(episodes, reward, data_end_ms)
    finished = sum(e.final_epoch is not None for e in episodes.values())
    dead = sum(e.final_epoch is None and data_end_ms - e.last_seen_ms > reward.dead_after_s * 1000
               for e in episodes.values())
    decisions = sum(len(e.decisions) for e in episodes.values())
    rewards = np.array([t.reward for t in steps]) if steps else np.zeros(0)
    summary = {
        "topic": window.topic,
        "records": len(records),
        "undecodable": window.undecodable,
        "by_type": dict(Counter(r.name for r in records)),
        "episodes": len(episodes),
        "finished": finished,
        "dead": dead,
        "live": len(episodes) - finished - dead,
        "decisions": decisions,
        "redecided": redecided_ids(episodes),  # ids decided twice, differently: the handled record is kept
        "unmatched": unmatched_ids(episodes),  # left out: the handled record is not in the replayed data
        "transitions": len(steps),
        "excluded_pending": decisions - len(steps),
        "imputed_rewards": sum(t.imputed for t in steps),
        "germinate": sum(t.action != 0 for t in steps),
        "reward_mean": float(rewards.mean()) if len(rewards) else None,
        "reward_std": float(rewards.std()) if len(rewards) else None,
    }
    for key, value in summary.items():
        print(f"{key:>17}: {value}", file=out)
    return summary


# --------------------------------------------------------------------------- argparse


def parse_time_ms(text: str) -> int:
    """Epoch milliseconds, or an ISO-8601 date/time (UTC unless it names a zone)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither epoch ms nor an ISO-8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


def parse_offsets(text: str) -> dict[int, int]:
    """'0:120,1:98' -> {0: 120, 1: 98}."""
    try:
        pairs = (item.split(":") for item in text.split(",") if item.strip())
        return {int(p): int(o) for p, o in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not partition:offset[,partition:offset...]") from None


def _flag_type(annotation: Any, name: str) -> Callable[[str], Any] | None:
    if name in ("start_ms", "end_ms"):
        return parse_time_ms
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    base = typing.get_origin(args[0]) or args[0]
    if base is dict:
        return parse_offsets
    if base is bool:
        return None
    return base


def add_train_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, defaults and help from the dataclass."""
    from training.job import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    group = parser.add_argument_group("training (TrainConfig)")
    for f in fields(TrainConfig):
        flag = "--" + _FLAG_NAMES.get(f.name, f.name).replace("_", "-")
        help_ = f.metadata.get("help", "")
        kind = _flag_type(hints[f.name], f.name)
        if kind is parse_time_ms:
            help_ += " or ISO-8601"
        elif kind is parse_offsets:
            help_ += ", as partition:offset,..."
        if kind is None:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default,
                               help=help_)
        else:
            shown = "" if f.default is None else f" (default: {f.default})"
            group.add_argument(flag, dest=f.name, type=kind, default=f.default, help=help_ + shown)


def train_config_from_args(args: argparse.Namespace) -> Any:
    from training.job import TrainConfig

    return TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})


def add_training_commands(
    subparsers: argparse._SubParsersAction,
    common: Callable[[argparse.ArgumentParser], None] | None = None,
    settings: Callable[[argparse.Namespace], Settings] | None = None,
) -> dict[str, argparse.ArgumentParser]:
    """Add ``train``, ``promote``, ``rollback`` and ``replay`` to ``subparsers``.

    ``common`` adds the shared flags (--bootstrap, --prefix) to each sub-parser; ``settings``
    turns parsed args into Settings (default: :func:`tamiyo.config.settings_from_args`). Each sub-parser sets
    ``func(args) -> int`` (exit code), like the other tamiyo commands. Returns the sub-parsers.
    """
    to_settings = settings or settings_from_args
    made: dict[str, argparse.ArgumentParser] = {}

    def add(name: str, func: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        p = subparsers.add_parser(name, help=help_, description=help_)
        if common is not None:
            common(p)
        p.set_defaults(func=func)
        made[name] = p
        return p

    def run_train(args: argparse.Namespace) -> int:
        cmd_train(to_settings(args), train_config_from_args(args))
        return 0

    def run_promote(args: argparse.Namespace) -> int:
        from models.checkpoint import IncompatiblePolicyError

        try:
            cmd_promote(to_settings(args), args.version, args.reason, args.model)
        except IncompatiblePolicyError as exc:
            print(f"tamiyo: refusing to promote v{args.version}: {exc}", file=sys.stderr)
            return 1
        return 0

    def run_rollback(args: argparse.Namespace) -> int:
        try:
            cmd_rollback(to_settings(args), args.model)
        except RuntimeError as exc:
            print(f"tamiyo: {exc}", file=sys.stderr)
            return 1
        return 0

    def run_replay(args: argparse.Namespace) -> int:
        from training.episodes import RewardConfig

        cmd_replay(to_settings(args), args.start, args.end,
                   RewardConfig(horizon=args.horizon, dead_after_s=args.dead_after_s))
        return 0

    p = add("train", run_train, "replay the experience topic, train a policy offline, evaluate it off-policy, "
                                "register it in MLflow and promote it if the gate passes")
    add_train_config_flags(p)
    p = add("promote", run_promote, "make a registered policy version the champion (validated first)")
    p.add_argument("version", help="registered model version, e.g. 3")
    p.add_argument("--reason", default="manual promotion", help="recorded on the version")
    p.add_argument("--model", default=None, help="registered model name (default: $TAMIYO_REGISTERED_MODEL)")
    p = add("rollback", run_rollback, "make the previous champion the champion again")
    p.add_argument("--model", default=None, help="registered model name (default: $TAMIYO_REGISTERED_MODEL)")
    p = add("replay", run_replay, "summarise the episodes and transitions in the experience topic")
    p.add_argument("--start", type=parse_time_ms, default=None, help="records at or after (epoch ms or ISO-8601)")
    p.add_argument("--end", type=parse_time_ms, default=None, help="records before (epoch ms or ISO-8601)")
    p.add_argument("--horizon", type=int, default=3, help="reward horizon in epochs")
    p.add_argument("--dead-after-s", type=float, default=120.0, help="silence after which a run counts as dead")
    return made
