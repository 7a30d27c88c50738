"""The ``tamiyo`` command: one sub-command per process kind. Configuration: environment + flags."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable

from schemas.registry_client import RegistryError
from tamiyo.config import settings_from_args as _settings
from tamiyo.demo_options import DemoOptions

LOG_LEVELS = {"crit": logging.CRITICAL, "error": logging.ERROR, "warn": logging.WARNING,
              "info": logging.INFO, "debug": logging.DEBUG}


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS)")
    parser.add_argument("--prefix", help="topic prefix (default: $TAMIYO_TOPIC_PREFIX or 'tamiyo')")


def cmd_broker(args: argparse.Namespace) -> int:
    from tamiyo.broker.cli import run_broker

    return run_broker(_settings(args))


def cmd_schema_registry(args: argparse.Namespace) -> int:
    from tamiyo.broker.cli import run_schema_registry

    return run_schema_registry(_settings(args), port=args.port)


def cmd_topics(args: argparse.Namespace) -> int:
    from streams.kafka.admin import ensure_topics

    created = ensure_topics(_settings(args))
    print("created:", ", ".join(created) if created else "nothing (all topics exist)")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from streams.worker import run_worker

    return run_worker(_settings(args))


def cmd_host(args: argparse.Namespace) -> int:
    from hosts.host import run_host

    stats = run_host(_settings(args), model_id=args.model_id, epochs=args.epochs, seed=args.seed,
                     reports_per_message=args.reports_per_message)
    print(stats)
    return 0


def cmd_fleet(args: argparse.Namespace) -> int:
    from hosts.fleet import run_fleet

    settings = _settings(args)
    stats = run_fleet(settings, models=args.models, duration_s=args.duration, epochs=args.epochs,
                      epoch_interval_s=args.epoch_interval, seed=settings.seed if args.seed is None else args.seed,
                      max_worker_lag=args.max_worker_lag)
    print(stats)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from tamiyo.demo import run_demo

    options = DemoOptions(duration_s=args.duration, hosts=args.hosts, host_epochs=args.host_epochs,
                          fleet_models=args.fleet_models, summary_path=args.summary,
                          bad_messages=args.bad_messages, learning=not args.no_learning,
                          epsilon=args.epsilon, learner=args.learner)
    summary = run_demo(_settings(args), options)
    return 0 if summary["commands_applied"] > 0 else 1


def _use_bootstrap(args: argparse.Namespace) -> None:
    """``--bootstrap`` of bench and chaos: their own processes and the workers they start read it
    from the environment (each run makes its own topic prefixes)."""
    if args.bootstrap:
        os.environ["KAFKA_BOOTSTRAP_SERVERS"] = args.bootstrap


def cmd_bench(args: argparse.Namespace) -> int:
    from tamiyo.bench import run_bench

    _use_bootstrap(args)
    data = run_bench(args.out, args.only)
    return 0 if data["metrics"] else 1


def cmd_chaos(args: argparse.Namespace) -> int:
    from tamiyo.chaos import run_chaos

    _use_bootstrap(args)
    report = run_chaos(args.out, args.only, quick=args.quick)
    return 0 if report["passed"] else 1


def cmd_status(args: argparse.Namespace) -> int:
    from tamiyo.status import run_status

    return run_status(_settings(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tamiyo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], int], help_: str,
            prefix: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        if prefix:
            _common(p)
        else:  # bench and chaos make their own topic prefixes
            p.add_argument("--bootstrap", help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS, "
                                               "else an embedded Apache Kafka)")
        p.set_defaults(func=func)
        return p

    from training.cli import add_training_commands

    add_training_commands(sub, _common, _settings)
    add("broker", cmd_broker, "run the embedded broker (TAMIYO_BROKER=auto|kafka|tansu) until Ctrl-C")
    p = add("schema-registry", cmd_schema_registry,
            "run the embedded schema registry (Apicurio Registry, Confluent-compatible API) until Ctrl-C")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    add("topics", cmd_topics, "create the Tamiyo topics if missing")
    add("worker", cmd_worker, "run a Faust worker (same as: faust -A streams.app worker)")
    p = add("host", cmd_host, "train a real KasminaMLP on sklearn digits and follow the controller")
    p.add_argument("--model-id", default=f"host-{os.getpid()}")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reports-per-message", type=int, default=8,
                   help="health reports per HealthBatch message (an epoch's reports are sent at its end anyway)")
    p = add("fleet", cmd_fleet, "simulate many hosts at high rate")
    p.add_argument("--models", type=int, default=100)
    p.add_argument("--duration", type=float, default=None, help="seconds to run (default: until --epochs)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per model to run")
    p.add_argument("--epoch-interval", type=float, default=1.0, help="seconds between a model's epochs")
    p.add_argument("--seed", type=int, default=None, help="seeds the simulated models (default: $TAMIYO_SEED or 0)")
    p.add_argument("--max-worker-lag", type=int, default=0,
                   help="hold back (up to 5 s per round) while the workers have more health and outcome "
                        "messages than this uncommitted; 0: never")
    p = add("bench", cmd_bench, "run the benchmarks; writes results.json and results.md", prefix=False)
    p.add_argument("--out", default="bench/results.json")
    p.add_argument("--only", nargs="*", default=None, help="benchmark groups or metric names")
    p = add("chaos", cmd_chaos, "run the reliability scenarios; writes a JSON report", prefix=False)
    p.add_argument("--out", default="chaos/report.json")
    p.add_argument("--only", nargs="*", default=None, help="scenario names")
    p.add_argument("--quick", action="store_true", help="the scaled-down versions the tests run")
    add("status", cmd_status, "topics, consumer lag, the champion version and the latest decision per model")
    p = add("demo", cmd_demo, "run the whole system on embedded defaults and print a summary")
    p.add_argument("--duration", type=float,
                   default=float(os.environ.get("TAMIYO_DEMO_SECONDS", DemoOptions.duration_s)),
                   help="seconds of traffic (half collecting, half on the learned policy)")
    p.add_argument("--hosts", type=int, default=DemoOptions.hosts, help="real training hosts")
    p.add_argument("--host-epochs", type=int, default=DemoOptions.host_epochs)
    p.add_argument("--fleet-models", type=int, default=DemoOptions.fleet_models, help="simulated models")
    p.add_argument("--bad-messages", type=int, default=DemoOptions.bad_messages, help="malformed messages to inject")
    p.add_argument("--summary", default=None, help="also write the summary as JSON here")
    p.add_argument("--no-learning", action="store_true",
                   help="skip the learning phase (train, promote, hot-swap) and run the heuristic only")
    p.add_argument("--epsilon", type=float, default=DemoOptions.epsilon,
                   help="exploration of the demo's behaviour policy")
    p.add_argument("--learner", default=DemoOptions.learner,
                   help="offline learner of the learning phase (see tamiyo train)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = LOG_LEVELS.get(os.environ.get("TAMIYO_LOG_LEVEL", "info"), logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except ValueError as exc:
        print(f"tamiyo: error: {exc}", file=sys.stderr)
        return 2
    except RegistryError as exc:  # a producer cannot start without its schema ids
        print(f"tamiyo: error: schema registry: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
