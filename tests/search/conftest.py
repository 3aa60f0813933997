"""A tiny synthetic log and pipeline files for the search tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import make_ratings


@pytest.fixture(scope="session")
def tiny_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(ratings.csv, dataset dir): 400 users × 300 items, every rating kept; the dataset is
    ingested once and reused by every pipeline that names it."""
    root = tmp_path_factory.mktemp("tiny-log")
    csv = root / "ratings.csv"
    make_ratings(n_users=400, n_items=300, seed=3).to_csv(csv, index=False)
    return csv, root / "data"


@pytest.fixture
def write_pipeline(tmp_path: Path, tiny_log: tuple[Path, Path]) -> Callable[..., Path]:
    """``write_pipeline(models, **top)`` → a pipeline YAML on the tiny log, output under
    ``tmp_path/runs``, top-k files off, MLflow in ``tmp_path/mlflow.db``."""
    csv, data = tiny_log

    def write(models: list[dict[str, Any]], name: str = "pipe.yaml", **top: Any) -> Path:
        raw: dict[str, Any] = {
            "name": "search-test",
            "output_dir": str(tmp_path / "runs"),
            "device": "cpu",
            "data": {
                "name": "tiny", "source": "table", "path": str(csv), "out": str(data),
                "preprocess": {"threshold": None},
                "split": {"method": "strong", "n_heldout_users": 40},
            },
            "models": models,
            "evaluation": {"ks": [10, 100]},
            "recommend": {"enabled": False},
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "log_model": False},
        }
        raw.update(top)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    return write
