"""The logged recvae model (MLflow models-from-code): no pickle anywhere in it, nothing
unpickled when it loads, top-k per user from ``predict``, and ``mlflow models serve`` over HTTP
honouring ``params: {k}``."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from recvae.errors import RecvaeError
from recvae.evaluation import evaluate
from recvae.models.autoencoders.models import MultVAE
from recvae.models.ease import EASE
from recvae.tracking import Tracker
from tests.helpers import TINY_ITEM_IDS, tiny_dataset
from tests.servers import free_port, stop, wait_for

HISTORY = pd.DataFrame({
    "user_id": ["u1", "u1", "u1", "u2", "u2"],
    "item_id": [int(TINY_ITEM_IDS[i]) for i in (0, 1, 2, 5, 6)],
})


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """An autoencoder and EASE, each logged as a LoggedModel of a pipeline's child run."""
    shm = Path("/dev/shm")
    root = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() else tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    ds = tiny_dataset()
    infos = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        tracker = Tracker(uri)
        with tracker.start_pipeline("tiny-pipeline", dataset=ds, config={"models": ["a", "b"]}):
            models = (MultVAE(hidden_dims=(8,), latent_dim=4, epochs=1, batch_size=4, device="cpu",
                              threads=1), EASE(l2=1.0, dtype="float32"))
            for model in models:
                with tracker.start_model(model.name, params={"model": model.params()}):
                    model.fit(ds)
                    test = evaluate(model.score, ds.test, ks=(5,)).as_metrics("test")
                    infos[model.name] = tracker.log_model(model, ds, metrics=test)
    yield {"uri": uri, "infos": infos, "root": root}
    shutil.rmtree(root, ignore_errors=True)


def download(uri: str, model_uri: str, dst: Path) -> Path:
    mlflow.set_tracking_uri(uri)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst)))


def test_logged_model_holds_no_pickle_and_predicts(
    logged: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = mlflow.MlflowClient(logged["uri"])
    assert set(logged["infos"]) == {"mult-vae", "ease"}
    for name, info in logged["infos"].items():
        model = client.get_logged_model(info.model_id)
        assert model.name == name  # named after its model, not "model"
        assert {m.key for m in model.metrics} >= {"test/ndcg_at_5", "test/recall_at_5"}
        assert all(m.dataset_name == "tiny:test" for m in model.metrics)
        assert model.params  # the model's hyper-parameters are shown on its page

        local = download(logged["uri"], info.model_uri, tmp_path / name)
        files = [p for p in local.rglob("*") if p.is_file()]
        assert (local / "MLmodel").is_file() and files
        assert not [p for p in files if p.suffix in (".pkl", ".pt", ".pickle")], files
        mlmodel = (local / "MLmodel").read_text()
        assert "python_model.pkl" not in mlmodel  # a cloudpickled PythonModel would be
        assert "loader_module: mlflow.pyfunc.loaders.code_model" in mlmodel  # models from code
        if name == "ease":  # float32 where the model is float32: n_items² × 4 bytes, one copy
            weights = [p for p in files if p.name.endswith(".npy") and np.load(p).ndim == 2]
            assert [np.load(p).dtype for p in weights] == [np.float32]

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("loading a recvae model unpickled something")

    for info in logged["infos"].values():
        with monkeypatch.context() as mp:  # loading must unpickle nothing
            mp.setattr(pickle, "load", refuse)
            mp.setattr(pickle, "loads", refuse)
            loaded = mlflow.pyfunc.load_model(info.model_uri)
        out = loaded.predict(HISTORY, params={"k": 3})
        assert list(out.columns) == ["user_id", "rank", "item_id", "score"]
        assert out.groupby("user_id").size().to_dict() == {"u1": 3, "u2": 3}
        seen = set(zip(HISTORY.user_id, HISTORY.item_id, strict=True))
        assert not seen & set(zip(out.user_id, out.item_id, strict=True))


@pytest.mark.parametrize("k", [-3, 0])
def test_a_bad_k_is_one_line_error(logged: dict, k: int) -> None:
    """Not a silent default (k=0 used to give 10 rows) nor an error deep in top-k (k=-3)."""
    loaded = mlflow.pyfunc.load_model(logged["infos"]["ease"].model_uri)
    message = f"params.k: expected a positive integer (the number of items per user), got {k}"
    with pytest.raises(RecvaeError) as caught:
        loaded.predict(HISTORY, params={"k": k})
    assert isinstance(caught.value, MlflowException)  # what the scoring server answers with 400
    assert str(caught.value) == caught.value.message == message
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"


def post(url: str, body: dict) -> tuple[int, dict]:
    """POST ``body`` as JSON; the status and the decoded JSON answer (also of an HTTP error)."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.slow
def test_serve_returns_k_rows_per_user(logged: dict, tmp_path: Path) -> None:
    """``mlflow models serve --env-manager local`` on loopback; ``params: {k: 5}`` must reach
    the model (the default is 10 and there are 10 items: 5 rows per user only if it does)."""
    local = download(logged["uri"], logged["infos"]["ease"].model_uri, tmp_path / "served")
    port, log = free_port(), tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(local),
             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
        )
    try:
        wait_for(f"{url}/ping", proc, log, limit=90)
        data = HISTORY.to_dict(orient="split", index=False)
        status, answer = post(f"{url}/invocations", {"dataframe_split": data, "params": {"k": 5}})
        assert status == 200, answer
        rows = pd.DataFrame(answer["predictions"])
        assert rows.groupby("user_id").size().to_dict() == {"u1": 5, "u2": 5}
        assert sorted(rows["rank"].unique().tolist()) == [1, 2, 3, 4, 5]
        # a bad k: HTTP 400 with recvae's one-line message, no stack trace, no echo of the input
        status, answer = post(f"{url}/invocations", {"dataframe_split": data, "params": {"k": -3}})
        assert status == 400
        assert answer["error_code"] == "INVALID_PARAMETER_VALUE" and "stack_trace" not in answer
        assert answer["message"] == (
            "params.k: expected a positive integer (the number of items per user), got -3")
    finally:
        stop(proc)
