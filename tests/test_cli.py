"""The ``tamiyo`` command line: which flags reach what (pure parsing; the commands run elsewhere)."""

from __future__ import annotations

import os

import pytest

from tamiyo import cli


def test_bench_and_chaos_take_a_bootstrap_but_no_prefix(monkeypatch) -> None:
    parser = cli.build_parser()
    for command in ("bench", "chaos"):
        args = parser.parse_args([command, "--bootstrap", "10.0.0.1:9092"])
        monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
        cli._use_bootstrap(args)
        assert os.environ["KAFKA_BOOTSTRAP_SERVERS"] == "10.0.0.1:9092"  # what their workers inherit
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--prefix", "x"])  # each run makes its own prefixes
    assert parser.parse_args(["worker", "--prefix", "x"]).prefix == "x"


def test_the_fleet_seed_defaults_to_tamiyo_seed(monkeypatch) -> None:
    seen = {}
    monkeypatch.setattr("hosts.fleet.run_fleet", lambda settings, **kw: seen.update(kw) or {})
    monkeypatch.setenv("TAMIYO_SEED", "7")
    assert cli.main(["fleet", "--models", "1", "--epochs", "1"]) == 0 and seen["seed"] == 7
    assert cli.main(["fleet", "--models", "1", "--epochs", "1", "--seed", "3"]) == 0 and seen["seed"] == 3
