"""The MLflow pyfunc wrapper: a logged recvae model that returns top-k items for user histories.

Logged by :meth:`recvae.tracking.Tracker.log_model`. Loaded with ``mlflow.pyfunc.load_model``
in any environment where ``recvae`` is installed (nothing is pip-installed at load time)::

    model = mlflow.pyfunc.load_model("models:/ml-20m-mult-vae/1")
    history = pd.DataFrame({"user_id": ["u1", "u1", "u2"], "item_id": [1, 50, 7]})
    model.predict(history, params={"k": 10})   # user_id, rank, item_id, score
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import scipy.sparse as sp
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from recvae.errors import RecvaeError

DEFAULT_K = 10
MODEL_DIR_ARTIFACT = "model_dir"


class ServingInputError(MlflowException, RecvaeError):
    """A bad input or parameter of :meth:`RecvaeTopK.predict`, in one line.

    A :class:`RecvaeError` for Python callers; for ``mlflow models serve``, an MlflowException
    with ``INVALID_PARAMETER_VALUE``, which MLflow's scoring server answers with HTTP 400 and
    ``{"error_code": "INVALID_PARAMETER_VALUE", "message": ...}`` (any other exception becomes
    "Encountered an unexpected error while evaluating the model" with a stack trace). Its message
    stays the one given: the scoring server rewrites the message of an MlflowException raised by
    ``predict`` to ``Failed to predict data '<the whole input>'. \nError: <message>``, lines that
    echo the request back; the client gets this one line instead.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        if "_message" not in self.__dict__:  # set once, by MlflowException.__init__
            self._message = value


def top_k(params: dict[str, Any] | None) -> int:
    """``params["k"]`` (default :data:`DEFAULT_K`), checked: a positive integer."""
    k = (params or {}).get("k", DEFAULT_K)
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ServingInputError(
            f"params.k: expected a positive integer (the number of items per user), got {k!r}"
        )
    return int(k)


class RecvaeTopK(mlflow.pyfunc.PythonModel):
    """Top-k recommendation from interaction rows ``user_id, item_id`` (original ids).

    One input row per known interaction; items outside the model's vocabulary are ignored (a user
    whose items are all unknown, or whose ``item_id`` is null, is scored from an empty history).
    Output: ``user_id, rank, item_id, score``, the user's seen items excluded, users in order of
    first appearance, ranks 1..k.
    """

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Load the recvae model saved under the ``model_dir`` artifact."""
        from recvae.models import load_model

        self.model = load_model(context.artifacts[MODEL_DIR_ARTIFACT])
        self._item_index = pd.Index(self.model.item_ids_)

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """Top-k unseen items per user of ``model_input``; ``params={"k": int}`` (default 10).
        A bad ``k`` or missing columns raise :class:`ServingInputError` (HTTP 400 when served)."""
        from recvae.recommend import recommend_topk

        k = top_k(params)
        frame = pd.DataFrame(model_input)
        missing = {"user_id", "item_id"} - set(frame.columns)
        if missing:
            raise ServingInputError(
                f"model input: expected the columns user_id and item_id, missing {', '.join(sorted(missing))}"
            )
        user_rows, users = pd.factorize(frame["user_id"], sort=False)  # first-appearance order
        users = np.asarray(users)
        cols = self._item_positions(frame["item_id"])
        known = (cols >= 0) & (user_rows >= 0)  # null user ids are dropped
        history = sp.csr_matrix(
            (np.ones(known.sum(), np.float32), (user_rows[known], cols[known])),
            shape=(len(users), len(self._item_index)),
        )
        history.sum_duplicates()
        history.data[:] = 1.0
        rows, items, scores = recommend_topk(self.model, history, k)
        ranks = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left") + 1
        return pd.DataFrame(
            {
                "user_id": users[rows],
                "rank": ranks.astype(np.int32),
                "item_id": np.asarray(self.model.item_ids_)[items],
                "score": scores.astype(np.float32),
            }
        )

    def _item_positions(self, item_ids: pd.Series) -> np.ndarray:
        """Column of each item id in the model's vocabulary, -1 for unknown or null ids."""
        pos = self._item_index.get_indexer(item_ids)
        if (pos < 0).any() and self._item_index.dtype != item_ids.dtype:
            # e.g. ids that arrive as strings ("50") for an integer vocabulary: match by text
            by_text = pd.Index(self._item_index.astype(str)).get_indexer(item_ids.astype(str))
            pos = np.where(pos < 0, by_text, pos)
        return pos
