"""MLflow stores for the training tests: one migrated sqlite template per session, copied per test."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from training.dataset import TransitionDataset, split_by_episode, synthetic_transitions


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow sqlite store, migrated once per session (~3 s); tests copy it (~0.05 s)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    # The Default experiment's artifact root is fixed at migration as ./mlruns of the current
    # directory: migrate from the template's folder so nothing can ever land in the repository.
    cwd = os.getcwd()
    os.chdir(path.parent)
    try:
        MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    finally:
        os.chdir(cwd)
    return path


@pytest.fixture
def tracking_uri(migrated_db: Path, tmp_path: Path) -> str:
    db = tmp_path / "mlflow" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(migrated_db, db)
    return f"sqlite:///{db}"


@pytest.fixture
def one_thread():
    """Learner tests run on one torch thread (deterministic and not slower on 2 cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def uniform_split():
    data = TransitionDataset.from_transitions(synthetic_transitions(episodes=80, steps=10, seed=11))
    return split_by_episode(data, 0.3, seed=0)
