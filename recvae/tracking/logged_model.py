"""What a logged recvae model carries besides its weights: signature, input example, pinned
requirements."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd

import recvae
from recvae.data.dataset import Dataset
from recvae.models.base import Recommender


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
    """Ids may be integers or strings (whatever the dataset used), so they are typed ``Any``."""
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


def log_pyfunc(
    client: mlflow.MlflowClient, uri: str, experiment_id: str, run_id: str, *, model_dir: str,
    name: str, k: int, example: pd.DataFrame, registered_model_name: str | None,
    metadata: dict[str, str],
) -> mlflow.models.model.ModelInfo:
    """Log the saved recvae model in ``model_dir`` as the pyfunc :class:`recvae.pyfunc.RecvaeTopK`
    of run ``run_id``, without MLflow's active-run state (the tracker may be replaying a run
    long after it ended): the LoggedModel is created in the run's experiment explicitly."""
    import warnings

    from mlflow.models import Model

    from recvae.pyfunc import MODEL_DIR_ARTIFACT, RecvaeTopK
    from recvae.tracking.store import set_tracking_uri

    set_tracking_uri(uri)  # Model.log and its finalisation use the process-wide URI
    params = client.get_run(run_id).data.params
    logged = client.create_logged_model(
        experiment_id, name=name, source_run_id=run_id, params=params,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MLflow's integer-column schema hint
        return Model.log(
            artifact_path=None,  # deprecated for ``name``, still a required argument
            name=name,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            model_id=logged.model_id,
            python_model=RecvaeTopK(),
            artifacts={MODEL_DIR_ARTIFACT: str(model_dir)},
            signature=signature(k),
            input_example=example,
            pip_requirements=pip_requirements(),
            registered_model_name=registered_model_name,
            metadata=metadata,
        )
