"""The ensemble stage of a pipeline: weights chosen on validation from the members' recorded
candidates (the test part never read for it), the blend tested once with the final members, and
logged, exported and served like any model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

import recvae.run.fit
import recvae.run.steps
from recvae.config import load_config
from recvae.data.dataset import Dataset
from recvae.errors import RecvaeError
from recvae.models import load_model
from recvae.models.ensemble import Ensemble
from recvae.models.implicit_models import ItemKNN
from recvae.run.context import SELECTION_METRIC
from recvae.run.ensemble import Blend, simplex
from recvae.run.pipeline import run_pipeline
from tests.servers import free_port, stop, wait_for

REPO = Path(__file__).resolve().parents[2]
MEMBERS = ("ease", "item-knn", "popularity")


EASE = {"model": "ease", "params": {"l2": 200.0}}
ALS = {"model": "als", "params": {"factors": 8, "iterations": 2}}


def config(work: Path, uri: str | None, first: dict = EASE, **extra: object):  # noqa: ANN201
    """The quickstart with ``first``, item-kNN and popularity, and an ensemble of all three."""
    return load_config(REPO / "pipelines" / "quickstart.yaml", {
        "data.path": str(REPO / "data" / "ml-latest-small.zip"), "data.out": str(work / "data"),
        "output_dir": str(work / "runs"), "recommend.k": 10,
        "models": [first, {"model": "item-knn"}, {"model": "popularity"}],
        "ensemble": {"members": "all", "weights": "search"},
        "tracking.uri": uri or "sqlite:///unused.db", **extra,
    })


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """The three-member pipeline with its ensemble, tracked, every test-part read counted."""
    shm = Path("/dev/shm")
    root = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() else tmp_path_factory.mktemp("mlflow")
    work = tmp_path_factory.mktemp("ensemble")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cfg = config(work, uri)
    reads: list[str] = []
    real = recvae.run.steps.evaluate

    def counting(score, part, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        test = Dataset.load(work / "data").test
        if part.holdout.shape == test.holdout.shape and (part.holdout != test.holdout).nnz == 0:
            reads.append("test")
        return real(score, part, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        for module in (recvae.run.steps, recvae.run.fit):
            mp.setattr(module, "evaluate", counting)
        outcomes = run_pipeline(cfg, show_progress=False)
    yield {"outcomes": {o.run_name: o for o in outcomes}, "reads": reads, "uri": uri,
           "out": work / "runs", "data": work / "data"}
    shutil.rmtree(root, ignore_errors=True)


def test_weights_are_chosen_on_validation_and_the_test_is_read_once(tracked: dict) -> None:
    outcomes = tracked["outcomes"]
    ens = outcomes["ensemble"]
    assert ens.ok, ens.error
    assert set(ens.weights) == set(MEMBERS) and sum(ens.weights.values()) == pytest.approx(1.0)
    # the search visits every corner: the blend is never below its best member on validation
    best_member = max(outcomes[m].metrics[SELECTION_METRIC] for m in MEMBERS)
    assert ens.metrics[SELECTION_METRIC] >= best_member
    # each model, the ensemble included, read the test part once; the weight search never did
    assert tracked["reads"] == ["test"] * (len(MEMBERS) + 1)
    assert ens.metrics["test/ndcg_at_100"] > 0 and Path(ens.topk_path).is_file()
    saved = load_model(ens.model_dir)
    assert isinstance(saved, Ensemble)
    assert dict(zip(saved.members, saved.weights, strict=True)) == {
        m: w for m, w in ens.weights.items() if w > 0}


def test_a_corner_of_the_blend_ranks_as_its_member(tracked: dict) -> None:
    """On the recorded candidates, a member alone scores its own validation metrics: exactly
    where its scores have no ties."""
    ds = Dataset.load(tracked["data"])
    files = [tracked["out"] / "ensemble" / f"{m}.validation.npz" for m in MEMBERS]
    blend = Blend.of(files, ds.validation.holdout, "zscore")
    for i, member in enumerate(MEMBERS[:2]):  # popularity's tied counts rank in either order
        corner = [float(j == i) for j in range(len(MEMBERS))]
        got = blend.metrics(corner, [20, 100])
        exact = tracked["outcomes"][member].metrics
        for key in ("val/ndcg_at_100", "val/recall_at_20", "val/ndcg_at_20"):
            assert got[key] == pytest.approx(exact[key], abs=1e-9), (member, key)


def test_the_ensemble_is_logged_like_a_model(tracked: dict) -> None:
    client = mlflow.MlflowClient(tracked["uri"])
    ens = tracked["outcomes"]["ensemble"]
    run = client.get_run(ens.run_id)
    assert run.info.run_name == "ensemble" and run.data.tags["mlflow.parentRunId"] == ens.parent_run_id
    for member, weight in ens.weights.items():
        assert float(run.data.params[f"weights.{member}"]) == pytest.approx(weight)
    assert {"val/ndcg_at_100", "test/ndcg_at_100", "time/fit_seconds"} <= set(run.data.metrics)
    assert client.get_logged_model(ens.model_id).name == "ensemble"
    table = json.loads((tracked["out"] / "results.json").read_text())
    assert [m["run_name"] for m in table["models"]][-1] == "ensemble"


def test_simplex_grid_holds_every_corner() -> None:
    for m in (2, 3, 4, 5, 7):
        points, step = simplex(m)
        assert len(points) <= 300 or step == 0.5
        for i in range(m):
            assert tuple(float(j == i) for j in range(m)) in points
        assert all(abs(sum(p) - 1) < 1e-9 for p in points)


def test_a_failed_member_is_left_out_with_a_warning(tmp_path: Path, monkeypatch, capsys) -> None:
    def broken(self, dataset, **kwargs):  # noqa: ANN001, ANN003, ANN202
        raise RecvaeError("item-knn: broken on purpose")

    monkeypatch.setattr(ItemKNN, "fit", broken)
    cfg = config(tmp_path, None, ALS, **{"recommend.enabled": False})
    outcomes = {o.run_name: o for o in run_pipeline(cfg, track=False, show_progress=False)}
    assert not outcomes["item-knn"].ok and outcomes["ensemble"].ok
    assert set(outcomes["ensemble"].weights) == {"als", "popularity"}
    err = capsys.readouterr().err
    assert "[ensemble] warning: member item-knn left out (it failed)" in err


def test_fixed_weights_are_used_as_given(tmp_path: Path) -> None:
    weights = {"als": 0.7, "item-knn": 0.3, "popularity": 0.0}
    cfg = config(tmp_path, None, ALS, **{"ensemble.weights": weights, "recommend.enabled": False})
    outcomes = {o.run_name: o for o in run_pipeline(cfg, track=False, show_progress=False)}
    assert outcomes["ensemble"].weights == weights
    assert load_model(outcomes["ensemble"].model_dir).members == ["als", "item-knn"]


@pytest.mark.slow
def test_an_ensemble_pyfunc_serves_over_http(tracked: dict, tmp_path: Path) -> None:
    """``mlflow models serve`` of the ensemble's LoggedModel: its members load from code."""
    ens = tracked["outcomes"]["ensemble"]
    mlflow.set_tracking_uri(tracked["uri"])
    model_uri = mlflow.MlflowClient(tracked["uri"]).get_logged_model(ens.model_id).artifact_location
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(tmp_path / "m")))
    port, log = free_port(), tmp_path / "serve.log"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(local), "--env-manager",
             "local", "--host", "127.0.0.1", "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, env=env,
        )
    try:
        wait_for(f"http://127.0.0.1:{port}/ping", proc, log, limit=90)
        history = pd.DataFrame({"user_id": [1, 1, 1], "item_id": [1, 50, 260]})
        body = {"dataframe_split": history.to_dict(orient="split", index=False), "params": {"k": 4}}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as resp:
            rows = pd.DataFrame(json.loads(resp.read())["predictions"])
        assert rows["rank"].tolist() == [1, 2, 3, 4] and not set(rows.item_id) & {1, 50, 260}
        assert np.all(np.diff(rows.score) <= 0)
    finally:
        stop(proc)
