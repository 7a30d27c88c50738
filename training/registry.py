"""The MLflow Model Registry for policies: register, promote (aliases), reject, roll back, download.

Policies are stored as plain artifacts (state_dict + config + feature spec, see models.checkpoint):
no pickle anywhere, loaded with ``torch.load(weights_only=True)``. Aliases, not stages:
``champion`` is what workers serve, ``previous`` is what ``rollback`` returns to.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "tamiyo"
CHAMPION = "champion"
PREVIOUS = "previous"


def configure_client_env(max_retries: int = 0, timeout_s: int = 5) -> None:
    """Fail fast on a dead tracking server (the MLflow default retries for minutes)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(max_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout_s))
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


ANY = object()  # promote(): no expectation about the current champion


class ChampionMoved(RuntimeError):
    """The champion changed between a challenger's evaluation and its promotion."""


@dataclass(frozen=True)
class ChampionRef:
    version: str
    run_id: str | None


class PolicyRegistry:
    def __init__(self, tracking_uri: str, name: str = "tamiyo-policy") -> None:
        import mlflow
        from mlflow import MlflowClient

        if tracking_uri.startswith("sqlite:///"):
            Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = tracking_uri
        self.name = name
        self._mlflow = mlflow
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def register(self, policy_dir: Path, run_id: str | None, tags: dict[str, str] | None = None) -> str:
        """Log ``policy_dir`` as a LoggedModel (linked to ``run_id``) and register a new version."""
        mlflow = self._mlflow
        # Without an explicit experiment MLflow files the model under the *active* experiment (the
        # Default one outside a run, whose artifact root is ./mlruns of the current directory), not
        # under the experiment of ``run_id``.
        experiment_id = (self.client.get_run(run_id).info.experiment_id if run_id
                         else ensure_experiment(self.tracking_uri, DEFAULT_EXPERIMENT))
        model = mlflow.initialize_logged_model(name=self.name, source_run_id=run_id, model_type="tamiyo-gnn",
                                               experiment_id=experiment_id)
        try:
            self.client.log_model_artifacts(model.model_id, str(policy_dir))
        except Exception:
            mlflow.finalize_logged_model(model.model_id, "FAILED")
            raise
        mlflow.finalize_logged_model(model.model_id, "READY")
        version = mlflow.register_model(f"models:/{model.model_id}", self.name, tags=tags or {})
        log.info("registered %s version %s", self.name, version.version)
        return str(version.version)

    def champion(self) -> ChampionRef | None:
        """The version behind the ``champion`` alias, or None when there is none yet."""
        from mlflow.exceptions import MlflowException

        try:
            version = self.client.get_model_version_by_alias(self.name, CHAMPION)
        except MlflowException as exc:
            if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "not found" in str(exc).lower():
                return None
            raise
        return ChampionRef(str(version.version), version.run_id)

    def alias_version(self, alias: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.name, alias).version)
        except MlflowException:
            return None

    def promote(self, version: str, reason: str, by: str = "tamiyo",
                expected_champion: str | None | object = ANY) -> None:
        """Point ``champion`` at ``version`` (the old champion becomes ``previous``).

        ``expected_champion``: the version the caller compared against (None: there was none).
        When the alias has moved since, ``ChampionMoved`` is raised and nothing changes: a job must
        not replace a champion it never measured. (MLflow has no compare-and-set for aliases, so
        this narrows the window between two jobs to the two calls here; it does not close it.)"""
        current = self.champion()
        if expected_champion is not ANY and (current.version if current else None) != expected_champion:
            raise ChampionMoved(f"{self.name}: the champion is now "
                                f"{'v' + current.version if current else 'unset'}, not "
                                f"{'v' + str(expected_champion) if expected_champion else 'unset'} as when "
                                f"v{version} was evaluated")
        if current is not None and current.version != str(version):
            self.client.set_registered_model_alias(self.name, PREVIOUS, current.version)
        self.client.set_registered_model_alias(self.name, CHAMPION, str(version))
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for key, value in {"gate": "promoted", "promoted_by": by, "promoted_at": stamp,
                           "promotion_reason": reason}.items():
            self.client.set_model_version_tag(self.name, str(version), key, value)
        log.info("promoted %s v%s to champion: %s", self.name, version, reason)

    def reject(self, version: str, reason: str) -> None:
        self.client.set_model_version_tag(self.name, str(version), "gate", "rejected")
        self.client.set_model_version_tag(self.name, str(version), "rejection_reason", reason)
        log.info("rejected %s v%s: %s", self.name, version, reason)

    def rollback(self, by: str = "tamiyo") -> str:
        """Make ``previous`` the champion again; returns the version now serving."""
        previous = self.alias_version(PREVIOUS)
        if previous is None:
            raise RuntimeError(f"{self.name} has no 'previous' alias to roll back to")
        current = self.champion()
        self.client.set_registered_model_alias(self.name, CHAMPION, previous)
        if current is not None:
            self.client.set_registered_model_alias(self.name, PREVIOUS, current.version)
            self.client.set_model_version_tag(self.name, current.version, "gate", "rolled_back")
        self.client.set_model_version_tag(self.name, previous, "rolled_back_to_by", by)
        return previous

    def download(self, version: str, destination: Path | None = None) -> Path:
        from mlflow.artifacts import download_artifacts

        destination = destination or Path(tempfile.mkdtemp(prefix=f"tamiyo-policy-v{version}-"))
        destination.mkdir(parents=True, exist_ok=True)
        path = download_artifacts(artifact_uri=f"models:/{self.name}/{version}", dst_path=str(destination))
        return Path(path)

    def load(self, version: str, destination: Path | None = None) -> Any:
        """Download and validate a version (shapes, feature spec, smoke inference)."""
        from models.checkpoint import load_policy

        policy = load_policy(self.download(version, destination))
        policy.version = self.version_string(version)
        return policy

    def validate(self, version: str) -> None:
        """Load a version as workers would (``load``), into a folder removed afterwards: raises
        ``IncompatiblePolicyError`` for one they would refuse. Run before every promotion."""
        with tempfile.TemporaryDirectory() as tmp:
            self.load(version, Path(tmp))

    def version_string(self, version: str) -> str:
        return f"{self.name}/v{version}"


def ensure_experiment(tracking_uri: str, name: str) -> str:
    """The experiment's id, created if missing. For a sqlite store its artifacts go next to the
    database (``<db dir>/artifacts``): MLflow's default is ./mlruns of the current directory."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:///"):
        location = (Path(tracking_uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another job
        existing = client.get_experiment_by_name(name)
        if existing is None:
            raise
        return existing.experiment_id
