"""A recvae model as an MLflow 3 LoggedModel: the pyfunc logged from code, its signature, input
example and pinned requirements, its test metrics linked to it and to the test data, its
registered version, and one stored copy per distinct model.

Every function here talks to the store and is idempotent: :func:`ensure_logged_model` finds
what an earlier (interrupted) call left and completes it, so the tracker's live path and
``recvae sync`` share it.

Example::

    info = ensure_logged_model(client, uri, experiment_id, run_id, spec)
    mlflow.pyfunc.load_model(info.model_uri).predict(history, params={"k": 10})
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

import recvae
from recvae.data.dataset import Dataset
from recvae.errors import RecvaeError
from recvae.models.base import Recommender

#: Tag of a LoggedModel: the content digest of the recvae model directory it holds.
DIGEST_TAG = "recvae.model_digest"
MODEL_TYPE = "recvae top-k recommender"
#: The file MLflow runs to build the served model (models from code: nothing is unpickled).
MODEL_CODE = Path(__file__).resolve().parents[1] / "pyfunc_model.py"


def input_example(model: Recommender, dataset: Dataset | None) -> pd.DataFrame:
    """Two users' (truncated) histories with original ids, for the logged model's example."""
    items = np.asarray(model.item_ids_)
    if dataset is not None and dataset.n_users:
        users, full = dataset.full_history()
        rows = []
        for r in range(min(2, len(users))):
            cols = full.indices[full.indptr[r] : full.indptr[r + 1]][:5]
            rows += [(dataset.user_ids[users[r]], items[c]) for c in cols]
        if rows:
            u, i = zip(*rows, strict=True)
            return pd.DataFrame({"user_id": list(u), "item_id": list(i)})
    return pd.DataFrame({"user_id": ["user-1"] * 3, "item_id": list(items[:3])})


def signature(k: int) -> mlflow.models.ModelSignature:
    """Ids may be integers or strings (whatever the dataset used), so they are typed ``Any``;
    ``k`` is a parameter (``predict(df, params={"k": 20})``, ``"params": {"k": 20}`` over HTTP)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec(AnyType(), "user_id"), ColSpec(AnyType(), "item_id")]),
        outputs=Schema(
            [ColSpec(AnyType(), "user_id"), ColSpec("integer", "rank"),
             ColSpec(AnyType(), "item_id"), ColSpec("float", "score")]
        ),
        params=ParamSchema([ParamSpec("k", "long", int(k))]),
    )


def pip_requirements() -> list[str]:
    """Pinned runtime requirements (given explicitly: MLflow's inference would re-load the
    model in a subprocess). ``recvae`` is not on PyPI: serve with ``--env-manager local``."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = [f"recvae=={recvae.__version__}"]
    for pkg in ("mlflow", "torch", "numpy", "scipy", "pandas", "pyarrow"):
        try:
            reqs.append(f"{pkg}=={version(pkg).split('+')[0]}")
        except PackageNotFoundError:
            reqs.append(pkg)
    return reqs


def content_digest(model_dir: str | os.PathLike) -> str:
    """SHA-256 of a saved model directory: every file's relative path and bytes, in order.
    Two runs that save the same model (same data, params and seed) give the same digest."""
    root = Path(model_dir)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


@dataclass(frozen=True)
class ModelSpec:
    """What a LoggedModel is made of, as journaled by the tracker (see ``Tracker.log_model``).

    ``metrics`` (the test metrics) are linked to the model and to ``dataset`` (``{"name",
    "digest"}`` of the test part); ``registered_model_name`` registers it (one version per
    distinct model).
    """

    name: str
    model_dir: Path
    digest: str
    k: int
    example: pd.DataFrame
    params: Mapping[str, str]
    metadata: Mapping[str, str]
    metrics: Mapping[str, float]
    dataset: Mapping[str, str] | None
    time: int
    registered_model_name: str | None = None


@dataclass(frozen=True)
class LoggedModelInfo:
    """Where a logged model is: ``model_uri`` loads it (``mlflow.pyfunc.load_model``);
    ``reused`` when an identical model logged before is linked instead of stored again."""

    model_id: str
    name: str
    reused: bool
    version: str | None = None  # in the registry, when registered

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model_id}"


def ensure_logged_model(
    client: mlflow.MlflowClient, uri: str, experiment_id: str, run_id: str, spec: ModelSpec,
) -> tuple[LoggedModelInfo, bool]:
    """The LoggedModel ``spec.name`` of run ``run_id``: made, linked and registered as far as
    the store lacks it. Returns its info and whether anything was added.

    One stored copy per distinct model: a READY model of the same name and content digest in
    the experiment (an identical earlier run's) is linked to this run as its output instead of
    stored again. A model left PENDING by an interrupted call is marked FAILED and made anew.
    The model is READY only once its artifacts, run link, metrics and version are in.
    """
    from mlflow.entities import LoggedModelStatus

    changed = False
    model = _run_model(client, run_id, spec.name)
    reused = model is not None and model.source_run_id != run_id
    if model is None:
        model = _same_model(client, experiment_id, spec.name, spec.digest)
        reused = model is not None
    created = model is None
    if model is None:
        model = _create(client, uri, experiment_id, run_id, spec)
        changed = True
    if model.model_id not in _outputs(client, run_id):
        from mlflow.entities import LoggedModelOutput

        client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
        changed = True
    changed |= _link_metrics(client, model.model_id, run_id, spec)
    version = None
    if spec.registered_model_name:
        version, added = _register(client, spec.registered_model_name, model.model_id, run_id, spec.name)
        changed |= added
    if created or model.status != LoggedModelStatus.READY:
        client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    return LoggedModelInfo(model.model_id, spec.name, reused, version), changed


def model_of_run(client: mlflow.MlflowClient, run_id: str, name: str | None = None) -> Any | None:
    """The READY LoggedModel (``name``, or the only one) among the outputs of run ``run_id``."""
    from mlflow.entities import LoggedModelStatus

    models = [client.get_logged_model(m) for m in _outputs(client, run_id)]
    ready = [m for m in models if m.status == LoggedModelStatus.READY and (name is None or m.name == name)]
    return ready[-1] if ready else None


def version_of(client: mlflow.MlflowClient, registered_model_name: str, model_id: str) -> Any | None:
    """The registered version of LoggedModel ``model_id``, if any."""
    source = f"models:/{model_id}"
    found = [v for v in client.search_model_versions(f"name='{registered_model_name}'") if v.source == source]
    return found[0] if found else None


def ensure_alias(
    client: mlflow.MlflowClient, registered_model_name: str, alias: str, run_id: str, name: str,
) -> bool:
    """Point ``alias`` at the registered version of run ``run_id``'s model ``name``; returns
    whether it moved."""
    from mlflow.exceptions import MlflowException

    model = model_of_run(client, run_id, name)
    version = version_of(client, registered_model_name, model.model_id) if model is not None else None
    if version is None:
        raise RecvaeError(
            f"alias {alias!r}: run {run_id} has no model {name!r} registered as "
            f"{registered_model_name!r}"
        )
    try:
        if client.get_model_version_by_alias(registered_model_name, alias).version == version.version:
            return False
    except MlflowException as e:
        if e.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
    client.set_registered_model_alias(registered_model_name, alias, version.version)
    return True


# --------------------------------------------------------------------------- internals
def _outputs(client: mlflow.MlflowClient, run_id: str) -> list[str]:
    run = client.get_run(run_id)
    return [o.model_id for o in (run.outputs.model_outputs if run.outputs is not None else [])]


def _run_model(client: mlflow.MlflowClient, run_id: str, name: str) -> Any | None:
    """This run's model ``name`` from an earlier call: READY, or PENDING (an interrupted call,
    finished now by its caller unless its artifacts never arrived: then marked FAILED)."""
    from mlflow.entities import LoggedModelStatus

    found = None
    for model_id in _outputs(client, run_id):
        model = client.get_logged_model(model_id)
        if model.name != name:
            continue
        if model.status == LoggedModelStatus.READY:
            found = model
        elif model.status == LoggedModelStatus.PENDING:
            if _has_artifacts(client, model):
                found = model
            else:
                client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
    return found


def _has_artifacts(client: mlflow.MlflowClient, model: Any) -> bool:
    """Whether the model's artifacts arrived whole (its MLmodel file is written last)."""
    from mlflow.exceptions import MlflowException

    try:
        return "MLmodel" in {f.path for f in client.list_logged_model_artifacts(model.model_id)}
    except (MlflowException, OSError):
        return False


def _same_model(client: mlflow.MlflowClient, experiment_id: str, name: str, digest: str) -> Any | None:
    """A READY model of the experiment with this name and content digest (the status is
    checked here: the store's filter on it compares an internal number)."""
    from mlflow.entities import LoggedModelStatus

    found = client.search_logged_models(
        [experiment_id], filter_string=f"name = '{_quote(name)}' AND tags.`{DIGEST_TAG}` = '{digest}'",
    )
    return next((m for m in found if m.status == LoggedModelStatus.READY), None)


def _quote(text: str) -> str:
    return text.replace("'", "\\'")


def _create(
    client: mlflow.MlflowClient, uri: str, experiment_id: str, run_id: str, spec: ModelSpec,
) -> Any:
    """A new PENDING LoggedModel holding the pyfunc (from code) and the recvae model directory."""
    import warnings

    from mlflow.models import Model

    from recvae.pyfunc import MODEL_DIR_ARTIFACT
    from recvae.tracking.store import set_tracking_uri

    set_tracking_uri(uri)  # the pyfunc's save resolves artifacts with the process-wide URI
    model = client.create_logged_model(
        experiment_id, name=spec.name, source_run_id=run_id, params=dict(spec.params),
        tags={DIGEST_TAG: spec.digest, "recvae.model": spec.metadata.get("recvae_model", spec.name)},
        model_type=MODEL_TYPE,
    )
    mlmodel = Model(
        artifact_path=model.artifact_location, model_uuid=model.model_id, run_id=run_id,
        model_id=model.model_id, metadata=dict(spec.metadata),
    )
    with tempfile.TemporaryDirectory(prefix="recvae-model-") as tmp:
        local = Path(tmp) / "model"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # MLflow's integer-column schema hint
            mlflow.pyfunc.save_model(
                str(local), python_model=str(MODEL_CODE),
                artifacts={MODEL_DIR_ARTIFACT: str(spec.model_dir)},
                signature=signature(spec.k), input_example=spec.example,
                pip_requirements=pip_requirements(), mlflow_model=mlmodel,
            )
        # MLmodel last: a model whose upload was cut short has none (see _has_artifacts)
        mlmodel_file = local / "MLmodel"
        kept = Path(tmp) / "MLmodel"
        mlmodel_file.rename(kept)
        client.log_model_artifacts(model.model_id, str(local))
        client.log_model_artifact(model.model_id, str(kept))
    return model


def _link_metrics(client: mlflow.MlflowClient, model_id: str, run_id: str, spec: ModelSpec) -> bool:
    """Log ``spec.metrics`` on the run, linked to the model and the test data, unless linked."""
    from mlflow.entities import Metric

    have = {m.key for m in client.get_logged_model(model_id).metrics or [] if m.run_id == run_id}
    dataset = spec.dataset or {}
    missing = [
        Metric(key, float(value), spec.time, 0, model_id=model_id,
               dataset_name=dataset.get("name"), dataset_digest=dataset.get("digest"))
        for key, value in spec.metrics.items() if key not in have
    ]
    for i in range(0, len(missing), 1000):
        client.log_batch(run_id, metrics=missing[i : i + 1000])
    return bool(missing)


def _register(
    client: mlflow.MlflowClient, registered_model_name: str, model_id: str, run_id: str, name: str,
) -> tuple[str, bool]:
    """The version of ``model_id`` under ``registered_model_name`` (created when missing)."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(
            registered_model_name,
            description="recvae models of one dataset and protocol; alias champion: the best "
                        "on validation of the latest pipeline that registered",
        )
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    found = version_of(client, registered_model_name, model_id)
    if found is not None:
        return found.version, False
    version = client.create_model_version(
        registered_model_name, source=f"models:/{model_id}", run_id=run_id,
        tags={"recvae.model": name}, model_id=model_id,
    )
    deadline = time.monotonic() + 300
    while version.status == "PENDING_REGISTRATION" and time.monotonic() < deadline:
        time.sleep(0.5)
        version = client.get_model_version(registered_model_name, version.version)
    return version.version, True
