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
