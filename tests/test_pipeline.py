"""The pipeline runner: subsets, failures isolated per model, the summary table, exit status."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from recvae import cli
from recvae.config import load_config
from recvae.models.popularity import Popularity
from recvae.pipeline import results_table, run_pipeline

REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, models: str) -> object:
    return load_config(
        REPO / "pipelines" / "quickstart.yaml",
        {
            "data.path": str(REPO / "data" / "ml-latest-small.zip"),
            "data.out": str(tmp_path / "data"),
            "output_dir": str(tmp_path / "runs"),
            "models": [{"model": m} for m in models.split(",")],
            "recommend.k": 5,
        },
    )


def test_a_failing_model_does_not_stop_the_others(tmp_path: Path, monkeypatch, capsys) -> None:
    def boom(self, dataset, **kwargs):  # noqa: ANN001, ANN003, ANN202
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Popularity, "fit", boom)
    cfg = _config(tmp_path, "popularity,item-knn")
    outcomes = run_pipeline(cfg, track=False, show_progress=False)
    assert [o.ok for o in outcomes] == [False, True]
    assert "disk on fire" in outcomes[0].error
    assert outcomes[1].metrics["test/ndcg_at_100"] > 0
    recs = pd.read_parquet(outcomes[1].topk_path)
    assert recs.groupby("user_id").size().eq(5).all()
    table = results_table(outcomes)
    assert "FAILED" in table and "item-knn" in table
    assert "popularity] FAILED: RuntimeError: disk on fire" in capsys.readouterr().err


def test_cli_run_exits_non_zero_and_names_the_failed_model(tmp_path: Path, monkeypatch, capsys) -> None:
    def boom(self, dataset, **kwargs):  # noqa: ANN001, ANN003, ANN202
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Popularity, "fit", boom)
    argv = [
        "run", str(REPO / "pipelines" / "quickstart.yaml"), "--no-track", "--quiet",
        "--models", "popularity,item-knn",
        "--set", f"data.path={REPO / 'data' / 'ml-latest-small.zip'}",
        "--set", f"data.out={tmp_path / 'data'}", "--set", f"output_dir={tmp_path / 'runs'}",
    ]
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    assert "1 model(s) failed: popularity: RuntimeError: disk on fire" in captured.err
    assert "item-knn" in captured.out and "recall_at_20" in captured.out


def test_models_subset_and_unknown_name(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "popularity,item-knn")
    outcomes = run_pipeline(cfg, only=["item-knn"], track=False, show_progress=False)
    assert [o.run_name for o in outcomes] == ["item-knn"]
    from recvae.errors import RecvaeError

    with pytest.raises(RecvaeError, match="'ease' is not in"):
        run_pipeline(cfg, only=["ease"], track=False, show_progress=False)
