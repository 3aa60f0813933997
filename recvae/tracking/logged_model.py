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
