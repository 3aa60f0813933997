"""A finished pipeline run is never rewritten: ``--resume`` continues only a run that did not
finish (its comparison keeps the models that ended before), a subset run writes beside the
whole pipeline's files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import mlflow
import pytest

from recvae.config import load_config
from recvae.models.implicit_models import ItemKNN
from recvae.run.pipeline import run_pipeline

REPO = Path(__file__).resolve().parents[2]
MODELS = [{"model": "popularity"}, {"model": "item-knn"},
          {"model": "als", "params": {"factors": 8, "iterations": 2}}]


def config(tmp_path: Path):  # noqa: ANN201 - PipelineConfig
    return load_config(REPO / "pipelines" / "quickstart.yaml", {
        "data.path": str(REPO / "data" / "ml-latest-small.zip"), "data.out": str(tmp_path / "data"),
        "output_dir": str(tmp_path / "runs"), "models": MODELS, "recommend.enabled": False,
        "tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "tracking.log_model": False,
    })


def rows(path: Path) -> list[str]:
    with path.open() as f:
        return [r["model"] for r in csv.DictReader(f)]


def table_rows(client: mlflow.MlflowClient, run_id: str, uri: str) -> list[str]:
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="comparison.json",
                                                tracking_uri=uri)
    doc = json.loads(Path(local).read_text())
    return [r[0] for r in doc["data"]]


def test_a_subset_resume_after_a_finished_run_leaves_its_comparison_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri, cfg = f"sqlite:///{tmp_path / 'mlflow.db'}", config(tmp_path)
    first = run_pipeline(cfg, show_progress=False)
    parent = first[0].parent_run_id
    client = mlflow.MlflowClient(uri)
    best = client.get_run(parent).data.tags["recvae.best_model"]
    out = Path(cfg.output_dir)

    again = run_pipeline(cfg, only=["item-knn"], show_progress=False, resume=True)
    assert "the last pipeline run finished; starting a new one" in capsys.readouterr().out
    assert again[0].parent_run_id != parent  # a new pipeline run, not the finished one reopened
    finished = client.get_run(parent)
    assert finished.data.tags["recvae.best_model"] == best and finished.info.status == "FINISHED"
    assert sorted(table_rows(client, parent, uri)) == sorted(m["model"] for m in MODELS)
    assert sorted(rows(out / "comparison.csv")) == sorted(m["model"] for m in MODELS)  # untouched
    assert rows(out / "comparison.item-knn.csv") == ["item-knn"]  # beside it
    subset = json.loads((out / "results.item-knn.json").read_text())["models"]
    assert [m["run_name"] for m in subset] == ["item-knn"]
    assert len(json.loads((out / "results.json").read_text())["models"]) == len(MODELS)


def test_resume_continues_an_unfinished_run_with_the_models_that_ended_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri, cfg = f"sqlite:///{tmp_path / 'mlflow.db'}", config(tmp_path)
    real = ItemKNN.fit

    def interrupted(self, dataset, **kwargs):  # noqa: ANN001, ANN003, ANN202
        raise KeyboardInterrupt  # Ctrl-C (or a kill) while item-knn trains

    monkeypatch.setattr(ItemKNN, "fit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, show_progress=False)
    monkeypatch.setattr(ItemKNN, "fit", real)
    client = mlflow.MlflowClient(uri)
    (killed,) = client.search_runs([client.get_experiment_by_name("ml-latest-small (strong)").experiment_id],
                                   filter_string="tags.`recvae.run_type` = 'pipeline'")
    assert killed.info.status == "KILLED"

    done = run_pipeline(cfg, only=["item-knn", "als"], show_progress=False, resume=True)
    assert [o.run_name for o in done] == ["popularity", "item-knn", "als"]  # the earlier one kept
    assert {o.parent_run_id for o in done if o.run_name != "popularity"} == {killed.info.run_id}
    assert sorted(table_rows(client, killed.info.run_id, uri)) == ["als", "item-knn", "popularity"]
    assert client.get_run(killed.info.run_id).info.status == "FINISHED"
    assert sorted(rows(Path(cfg.output_dir) / "comparison.csv")) == ["als", "item-knn", "popularity"]
