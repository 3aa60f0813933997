"""Fixtures of the reliability suite: SQLite stores that are quick to make."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.tracking.mlflow_server import fast_dir


@pytest.fixture(scope="session")
def store_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An empty MLflow SQLite store with its schema built once (MLflow's migrations take
    10-30 s per new database); tests copy it."""
    from mlflow.tracking import MlflowClient

    root = Path(tempfile.mkdtemp(prefix="recvae-template-", dir=fast_dir(tmp_path_factory.getbasetemp())))
    db = root / "template.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    yield db
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def store_dir(tmp_path: Path) -> Iterator[Path]:
    """A fresh folder for stores, on tmpfs where there is one."""
    root = Path(tempfile.mkdtemp(prefix="recvae-store-", dir=os.path.realpath(fast_dir(tmp_path))))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def store(store_template: Path, store_dir: Path) -> str:
    """The URI of a new, empty SQLite store (a copy of the template)."""
    db = store_dir / "mlflow.db"
    shutil.copyfile(store_template, db)
    return f"sqlite:///{db}"
