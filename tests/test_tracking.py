"""MLflow tracking: parent/child runs, params, per-epoch and final metrics, tags, dataset input,
artifacts, the pyfunc model round trip, and failing fast on an unreachable server."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from mlflow.tracking import MlflowClient

from recvae.errors import RecvaeError
from recvae.evaluation import evaluate
from recvae.models.base import EpochReport
from recvae.models.ease import EASE
from recvae.models.popularity import Popularity
from recvae.recommend import recommend_topk, write_recommendations
from recvae.tracking import (
    MAX_PARAM_VALUE,
    Tracker,
    check_tracking_server,
    dataset_digest,
    experiment_name,
    flatten_params,
    registered_model_name,
    resolve_tracking_uri,
)
from tests.helpers import TINY_ITEM_IDS, TINY_ITEMS, tiny_dataset
from tests.servers import free_port

N_ITEMS = TINY_ITEMS
ITEM_IDS = TINY_ITEM_IDS
MODELS = ("popularity", "ease")


CONFIG = {
    "data": {"name": "tiny", "min_user_items": 5, "split": {"method": "strong", "n_heldout": 2}},
    "models": list(MODELS),
    "notes": "x" * (MAX_PARAM_VALUE + 50),
}


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One pipeline run with a child run per model, logged to a fresh sqlite store."""
    # SQLite on tmpfs when there is one: MLflow's schema migrations are fsync-bound on a disk
    shm = Path("/dev/shm")
    root = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() else tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    ds = tiny_dataset()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        tracker = Tracker(uri)
        children, infos = {}, {}
        with tracker.start_pipeline(
            "tiny-pipeline", dataset=ds, dataset_source=root / "dataset", config=CONFIG,
            description="tracking test pipeline", device="cpu",
        ) as parent:
            for name in MODELS:
                model = Popularity() if name == "popularity" else EASE(l2=1.0)
                with tracker.start_model(name, params={"model": {"name": name, **model.params()}},
                                         config={"model": name}) as child:
                    callback = tracker.epoch_callback()
                    model.fit(ds, callbacks=[callback])
                    for epoch in range(3):  # a trained model's learning curve
                        callback(EpochReport(epoch, {"train/loss": 3.0 - epoch,
                                                     "val/ndcg_at_100": 0.1 * epoch},
                                             is_best=epoch == 1))
                    result = evaluate(model.score, ds.test, ks=(100,))
                    tracker.log_final(result.as_metrics("test"))
                    tracker.log_final(evaluate(model.score, ds.validation, ks=(100,))
                                      .as_metrics("val"))
                    tracker.log_timings(fit_seconds=0.5, score_seconds=0.25)
                    topk = write_recommendations(model, ds, root / f"{name}.parquet", k=3,
                                                 exclude="train").path
                    tracker.log_topk(topk)
                    if name == "ease":
                        tracker.log_topk(topk, max_bytes=10, sample_rows=4)
                        infos[name] = tracker.log_model(model, registered_model_name="tiny-ease")
                        infos["model"] = model
                    children[name] = child.info.run_id
        yield {
            "uri": uri, "client": MlflowClient(uri), "parent": parent.info.run_id,
            "children": children, "info": infos["ease"], "model": infos["model"], "ds": ds,
            "tracker": tracker, "root": root,
        }
    shutil.rmtree(root, ignore_errors=True)


def test_parent_and_one_child_run_per_model(logged: dict) -> None:
    client = logged["client"]
    exp = client.get_experiment_by_name("tiny (strong)")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 3
    by_id = {r.info.run_id: r for r in runs}
    parent = by_id[logged["parent"]]
    assert "mlflow.parentRunId" not in parent.data.tags
    assert parent.info.run_name == "tiny-pipeline" and parent.info.status == "FINISHED"
    for name, run_id in logged["children"].items():
        child = by_id[run_id]
        assert child.info.run_name == name
        assert child.data.tags["mlflow.parentRunId"] == logged["parent"]


def test_params_are_flattened_and_truncated(logged: dict) -> None:
    client = logged["client"]
    params = client.get_run(logged["parent"]).data.params
    assert params["data.min_user_items"] == "5"
    assert params["data.split.method"] == "strong"
    assert json.loads(params["models"]) == list(MODELS)
    assert len(params["notes"]) == MAX_PARAM_VALUE
    assert client.get_run(logged["children"]["ease"]).data.params["model.l2"] == "1.0"


def test_epoch_metrics_have_steps(logged: dict) -> None:
    client = logged["client"]
    for run_id in logged["children"].values():
        history = client.get_metric_history(run_id, "train/loss")
        assert [(m.step, m.value) for m in history] == [(0, 3.0), (1, 2.0), (2, 1.0)]
        # the per-epoch validation curve and the final (selected) value have names of their own
        curve = client.get_metric_history(run_id, "val_curve/ndcg_at_100")
        assert [m.step for m in curve] == [0, 1, 2]
        # final values: one point at step 0 each, so the chart view draws one bar per model
        for key in ("val/ndcg_at_100", "test/ndcg_at_100", "time/fit_seconds"):
            assert [m.step for m in client.get_metric_history(run_id, key)] == [0], key


def test_final_metrics_share_names_across_models(logged: dict) -> None:
    client = logged["client"]
    names = [set(client.get_run(r).data.metrics) for r in logged["children"].values()]
    assert names[0] == names[1]
    for key in ("test/ndcg_at_100", "test/recall_at_100", "val/ndcg_at_100",
                "time/fit_seconds", "time/score_seconds", "best_epoch"):
        assert key in names[0]
    metrics = client.get_run(logged["children"]["ease"]).data.metrics
    assert 0.0 <= metrics["test/ndcg_at_100"] <= 1.0
    assert metrics["best_epoch"] == 1.0


def test_tags(logged: dict) -> None:
    client = logged["client"]
    import recvae

    for run_id in [logged["parent"], *logged["children"].values()]:
        tags = client.get_run(run_id).data.tags
        digest = tags["recvae.dataset_digest"]
        assert digest == dataset_digest(logged["ds"]) == "tiny-strong-0123abcd"
        assert tags["recvae.version"] == recvae.__version__
        assert tags["recvae.device"] == "cpu"
        assert tags["mlflow.note.content"]
    assert client.get_run(logged["children"]["ease"]).data.tags["recvae.model"] == "ease"


def test_dataset_is_an_input(logged: dict) -> None:
    client = logged["client"]
    for run_id in [logged["parent"], *logged["children"].values()]:
        inputs = client.get_run(run_id).inputs.dataset_inputs
        assert len(inputs) == 1
        assert inputs[0].dataset.name == "tiny"
        assert inputs[0].dataset.digest == "tiny-strong-0123abcd"


def test_artifacts(logged: dict, tmp_path: Path) -> None:
    client = logged["client"]
    mlflow.set_tracking_uri(logged["uri"])
    # artifacts live beside the sqlite database, not in the working directory's ./mlruns
    exp = client.get_experiment_by_name("tiny (strong)")
    assert exp.artifact_location.replace("file://", "").startswith(str(logged["root"]))
    assert "config.yaml" in [a.path for a in client.list_artifacts(logged["parent"])]
    run_id = logged["children"]["ease"]
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "metrics.json", "learning_curves.png", "recommendations"} <= top
    recs = {a.path for a in client.list_artifacts(run_id, "recommendations")}
    assert recs == {"recommendations/ease.parquet", "recommendations/ease.sample.parquet"}
    local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(tmp_path)))
    assert (local / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    doc = json.loads((local / "metrics.json").read_text())
    assert doc["model"] == "ease" and "test/ndcg_at_100" in doc["metrics"]
    assert [e["epoch"] for e in doc["epochs"]][-3:] == [0, 1, 2]
    assert len(pd.read_parquet(local / "recommendations" / "ease.sample.parquet")) == 4
    assert len(pd.read_parquet(local / "recommendations" / "ease.parquet")) == 8 * 3


def test_pyfunc_round_trip(logged: dict) -> None:
    mlflow.set_tracking_uri(logged["uri"])
    loaded = mlflow.pyfunc.load_model(logged["info"].model_uri)
    histories = pd.DataFrame(
        {
            "user_id": ["alice", "alice", "alice", "bob", "bob", "carol"],
            "item_id": [500, 501, 999_999, 505, 506, 502],  # 999999: unknown, ignored
        }
    )
    out = loaded.predict(histories, params={"k": 4})
    assert list(out.columns) == ["user_id", "rank", "item_id", "score"]
    assert out["user_id"].drop_duplicates().tolist() == ["alice", "bob", "carol"]
    seen = histories.groupby("user_id")["item_id"].apply(set)
    for user, g in out.groupby("user_id"):
        assert len(g) == 4 and g["rank"].tolist() == [1, 2, 3, 4]
        assert not set(g["item_id"]) & seen[user]
        assert set(g["item_id"]) <= set(ITEM_IDS)
        assert (np.diff(g["score"].to_numpy()) <= 1e-6).all()
    # the same as recommending directly with the trained model
    history = sp.csr_matrix(
        ([1.0] * 5, ([0, 0, 1, 1, 2], [0, 1, 5, 6, 2])), shape=(3, N_ITEMS), dtype=np.float32
    )
    rows, items, _ = recommend_topk(logged["model"], history, 4)
    assert out["item_id"].tolist() == ITEM_IDS[items].tolist()
    assert len(loaded.predict(histories)) == 8 + 8 + 9  # default k=10 > unseen items
    versions = logged["client"].search_model_versions("name='tiny-ease'")
    assert len(versions) == 1




def test_unreachable_server_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.perf_counter()
    message = r"MLflow tracking server at .* is unreachable.*start it with `mlflow server`"
    with pytest.raises(RecvaeError, match=message):
        check_tracking_server(uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(RecvaeError, match="unset MLFLOW_TRACKING_URI"):
        Tracker("sqlite:///ignored.db")  # the environment wins over the config
    assert time.perf_counter() - start < 5


def test_silent_server_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as server:  # accepts connections, never answers
        server.bind(("127.0.0.1", 0))
        server.listen()
        start = time.perf_counter()
        with pytest.raises(RecvaeError, match="unreachable.*timed out"):
            check_tracking_server(f"http://127.0.0.1:{server.getsockname()[1]}", timeout=0.5)
        assert time.perf_counter() - start < 3


def test_resolve_tracking_uri(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert resolve_tracking_uri("http://mlflow:5000") == "http://mlflow:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert resolve_tracking_uri("http://mlflow:5000") == "sqlite:///env.db"
    with pytest.raises(RecvaeError, match="does not exist"):
        check_tracking_server(f"sqlite:///{tmp_path / 'missing' / 'mlflow.db'}")


def test_config_uri_is_not_overridden_by_an_earlier_tracker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; the tracker must not let that stick
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = Tracker(f"sqlite:///{tmp_path / 'a.db'}", check=False)
    second = Tracker(f"sqlite:///{tmp_path / 'b.db'}", check=False)
    assert (first.uri, second.uri) == (
        f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    )
    assert mlflow.get_tracking_uri() == second.uri
    assert "MLFLOW_TRACKING_URI" not in os.environ


def test_experiment_name_and_flatten() -> None:
    ds = tiny_dataset()
    assert experiment_name(ds) == "tiny (strong)"
    assert registered_model_name(ds) == "tiny-strong"
    ds.manifest = {"name": "ml-1m", "split": {"method": "temporal"}, "protocol": "weak"}
    assert experiment_name(ds) == "ml-1m (temporal)"
    assert flatten_params({"a": {"b": {"c": 1}, "d": None}, "e": [1, 2], "f": {}}) == {
        "a.b.c": "1", "a.d": "null", "e": "[1, 2]", "f": "{}",
    }

    @dataclass
    class Training:
        epochs: int = 200
        out: Path = Path("runs/x")

    assert flatten_params({"training": Training()}) == {
        "training.epochs": "200", "training.out": "runs/x",
    }


TELEMETRY_PROBE = """
import os, sys
if sys.argv[1] == "mlflow-first":
    import mlflow  # imported before recvae: MLflow starts its telemetry client on import
    from mlflow.telemetry import get_telemetry_client
    assert get_telemetry_client() is not None, "telemetry is off without recvae: the probe proves nothing"
import recvae.tracking
from mlflow.telemetry import get_telemetry_client
print(get_telemetry_client() is None, os.environ.get("MLFLOW_DISABLE_TELEMETRY"))
"""


@pytest.mark.parametrize("order", ["recvae-first", "mlflow-first"])
def test_mlflow_telemetry_is_off_in_recvae_processes(order: str, tmp_path: Path) -> None:
    """MLflow's telemetry thread deletes an environment variable while our thread may be reading
    the environment (the `KeyError: '_MLFLOW_TELEMETRY_SESSION_ID'` of a first `recvae sync`):
    recvae turns it off, as a user would, unless the user chose otherwise."""
    # a bare environment: MLflow turns telemetry off by itself under pytest and CI variables
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONPATH": str(Path.cwd())}
    run = [sys.executable, "-c", TELEMETRY_PROBE, order]
    out = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.split() == ["True", "true"]
    env["MLFLOW_DISABLE_TELEMETRY"] = "false"  # the user's own choice wins
    out = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.split() == ["False", "false"]


# What pyproject.toml's filterwarnings silences, each for a reason given there: third-party code
THIRD_PARTY = ("The ``noload`` loader strategy is deprecated", "Operation with range is deprecated")


def test_tracking_emits_no_warning_of_its_own(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    """A run with a dataset input, metrics, an artifact and a logged model warns of nothing but
    the third-party deprecations pyproject.toml lists (MLflow's integer-schema hint leaked
    from the dataset input)."""
    ds = tiny_dataset()
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", check=False, output_dir=tmp_path / "out")
    with tracker.start_pipeline("p", dataset=ds, config={"models": ["ease"]}):
        with tracker.start_model("ease", params={"l2": 1.0}):
            model = EASE(l2=1.0)
            model.fit(ds)
            tracker.log_model(model, ds, metrics=evaluate(model.score, ds.test, ks=(5,)).as_metrics("test"))
    ours = [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in recwarn
            if not str(w.message).startswith(THIRD_PARTY)]
    assert ours == []
