"""The pipeline run is the comparison: its MLflow table, CSV, Markdown and chart, the best
model on validation tagged and (with ``register``) aliased ``champion``, a dated run name,
final metrics at step 0, and one stored copy of a model that two runs logged identically."""

from __future__ import annotations

import csv
import json
import re
import shutil
import tempfile
from pathlib import Path

import mlflow
import pytest

from recvae.config import load_config
from recvae.run.comparison import CHAMPION_ALIAS, TABLE_ARTIFACT
from recvae.run.pipeline import run_pipeline

REPO = Path(__file__).resolve().parents[1]
MODELS = ("popularity", "item-knn")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """The same two-model pipeline run twice into one store, registering its models."""
    shm = Path("/dev/shm")
    root = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() else tmp_path_factory.mktemp("mlflow")
    work = tmp_path_factory.mktemp("comparison")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cfg = load_config(REPO / "pipelines" / "quickstart.yaml", {
        "data.path": str(REPO / "data" / "ml-latest-small.zip"), "data.out": str(work / "data"),
        "output_dir": str(work / "runs"), "models": [{"model": m} for m in MODELS],
        "recommend.enabled": False, "tracking.uri": uri, "tracking.register": True,
    })
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        runs = [run_pipeline(cfg, show_progress=False) for _ in range(2)]
    yield {"client": mlflow.MlflowClient(uri), "uri": uri, "runs": runs, "out": work / "runs"}
    shutil.rmtree(root, ignore_errors=True)


def test_pipeline_run_holds_the_comparison(two_runs: dict) -> None:
    client, outcomes = two_runs["client"], two_runs["runs"][-1]
    parent = client.get_run(outcomes[0].parent_run_id)
    assert re.fullmatch(r"quickstart \d{4}-\d\d-\d\d \d\d:\d\d", parent.info.run_name)
    files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {TABLE_ARTIFACT, "comparison.csv", "comparison.md", "comparison.png"} <= files
    tables = json.loads(parent.data.tags["mlflow.loggedArtifacts"])
    assert {"path": TABLE_ARTIFACT, "type": "table"} in tables  # the UI shows it as a table

    local = Path(mlflow.artifacts.download_artifacts(
        run_id=parent.info.run_id, artifact_path=TABLE_ARTIFACT, tracking_uri=two_runs["uri"]))
    table = json.loads(local.read_text())
    columns, rows = table["columns"], table["data"]
    assert columns[:3] == ["model", "type", "val/ndcg_at_100"]
    expected = {"test/ndcg_at_100", "test/ndcg_at_100_stderr", "time/fit_seconds", "selected_epoch"}
    assert expected <= set(columns)
    assert sorted(r[0] for r in rows) == sorted(MODELS)  # one row per model

    by_val = sorted(outcomes, key=lambda o: -o.metrics["val/ndcg_at_100"])
    assert [r[0] for r in rows] == [o.run_name for o in by_val]  # best on validation first
    best = by_val[0]
    assert parent.data.tags["recvae.best_model"] == best.run_name
    assert client.get_run(best.run_id).data.tags["recvae.best_model"] == "true"
    with open(two_runs["out"] / "comparison.csv") as f:
        assert [r["model"] for r in csv.DictReader(f)] == [o.run_name for o in by_val]
    assert best.run_name in (two_runs["out"] / "comparison.md").read_text()


def test_final_metrics_are_single_values_at_step_0(two_runs: dict) -> None:
    client = two_runs["client"]
    for o in two_runs["runs"][-1]:
        for key in ("val/ndcg_at_100", "test/ndcg_at_100", "time/fit_seconds", "time/score_seconds"):
            assert [m.step for m in client.get_metric_history(o.run_id, key)] == [0], (o.run_name, key)


def test_models_are_registered_once_and_champion_is_best_on_validation(two_runs: dict) -> None:
    client, runs = two_runs["client"], two_runs["runs"]
    first, last = ({o.run_name: o for o in r} for r in runs)
    # the second run logged identical models: linked to the first run's, not stored again
    for name in MODELS:
        assert last[name].model_id == first[name].model_id, name
        assert client.get_logged_model(last[name].model_id).name == name
    experiment = runs[-1][0].experiment_id
    assert len(client.search_logged_models([experiment])) == len(MODELS)

    registered = next(iter({v.name for v in client.search_model_versions()}))
    versions = client.search_model_versions(f"name='{registered}'")
    assert len(versions) == len(MODELS)  # one version per distinct model
    champion = client.get_model_version_by_alias(registered, CHAMPION_ALIAS)
    best = max(runs[-1], key=lambda o: o.metrics["val/ndcg_at_100"])
    assert champion.source == f"models:/{best.model_id}"
    assert registered == "ml-latest-small-strong"
