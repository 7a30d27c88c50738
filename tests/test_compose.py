"""docker-compose.yml cannot run here (no Docker engine); check that it parses and names the stack."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_compose_file_names_kafka_mlflow_worker_and_fleet() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "mlflow", "worker", "fleet"} <= set(services)
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["worker"]["command"] == ["tamiyo", "worker"]
    assert services["worker"]["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert "mlflow server" in services["mlflow"]["command"]


def test_compose_creates_the_topics_first_and_publishes_the_metrics() -> None:
    """Workers and the fleet start after ``tamiyo topics`` (compacted topology, larger messages); the
    worker's metrics listen on every interface inside its container and are published on the host."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert services["topics"]["command"] == ["tamiyo", "topics"]
    for name in ("worker", "fleet"):
        assert services[name]["depends_on"]["topics"] == {"condition": "service_completed_successfully"}
    worker = services["worker"]
    assert worker["environment"]["TAMIYO_METRICS_ADDR"] == "0.0.0.0"
    assert worker["ports"] == [f"127.0.0.1:{worker['environment']['TAMIYO_METRICS_PORT']}:9400"]
    assert worker["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"  # merged from the shared block
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv/", ".tamiyo/", ".git/"} <= set(ignored)
