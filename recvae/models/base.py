"""The one interface every model honours: fit, score, save, load.

Evaluation, top-k export, tracking and the pipeline talk only to this interface, so they never
branch on the model type. Models compute; they know nothing of MLflow, files other than their own
save directory, or the CLI. Progress and tracking reach them as callbacks.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recvae.data.dataset import Dataset
from recvae.errors import RecvaeError
from recvae.io import atomic_dir, load_npy, read_json, read_parquet_column
from recvae.reporting import Callback, EpochReport, report_all, report_fit_seconds  # noqa: F401 - re-exported

MODEL_FILE = "recvae_model.json"
MODEL_FORMAT = 1


class NotFittedError(RecvaeError):
    """A model was used before ``fit`` or ``load``."""


@dataclass(eq=False)  # fitted models compare by identity: their arrays have no single truth value
class Recommender(ABC):
    """Base class: hyper-parameters are dataclass fields stored as given; learned state ends in ``_``.

    Example::

        model = EASE(l2=500.0).fit(dataset)
        scores = model.score(dataset.test.fold_in[:100])   # (100, n_items) float32
    """

    name: ClassVar[str] = "base"
    #: True for models trained in epochs (the autoencoders): they select the epoch of best
    #: validation NDCG@100 (``best_epoch_``), write a checkpoint per epoch to ``checkpoint_dir``
    #: and continue from it with ``resume=True``. Closed-form and library-fitted models have
    #: nothing to checkpoint: they ignore both arguments and leave ``best_epoch_`` None.
    trains_in_epochs: ClassVar[bool] = False
    #: True for models whose ``fit`` trains data-parallel when called in every process of a
    #: torchrun job (``recvae train`` under torchrun, ``nproc`` in a pipeline).
    trains_distributed: ClassVar[bool] = False
    item_ids_: np.ndarray | None = field(default=None, init=False, repr=False)
    best_epoch_: int | None = field(default=None, init=False, repr=False)
    #: Per-epoch metrics of the training that produced the model (``{"epoch": e, ...}``, the
    #: epochs restored from a checkpoint included); empty for models fitted in one go.
    history_: list[dict[str, float]] = field(default_factory=list, init=False, repr=False)
    #: Wall seconds that earlier processes spent on this fit, carried by the checkpoint it
    #: resumed from (0 for a fit from scratch): the whole fit took this plus the resumed call.
    resumed_seconds_: float = field(default=0.0, init=False, repr=False)

    # -------------------------------------------------------------- contract
    @abstractmethod
    def fit(
        self,
        dataset: Dataset,
        *,
        callbacks: Sequence[Callback] = (),
        show_progress: bool = False,
        checkpoint_dir: str | os.PathLike | None = None,
        resume: bool = False,
    ) -> Recommender:
        """Learn from ``dataset.train`` (and select on ``dataset.validation`` where the model
        trains in epochs); see :attr:`trains_in_epochs` for ``checkpoint_dir`` and ``resume``."""

    @abstractmethod
    def _score(self, fold_in: sp.csr_matrix) -> np.ndarray:
        """Scores (n_rows, n_items) for a batch of users' histories."""

    @abstractmethod
    def _save_state(self, path: Path) -> None:
        """Write learned state into ``path`` (a fresh directory)."""

    @abstractmethod
    def _load_state(self, path: Path) -> None:
        """Read learned state written by ``_save_state``."""

    # ------------------------------------------------------------ shared API
    def score(self, fold_in: sp.csr_matrix) -> np.ndarray:
        """Dense float32 scores of shape (n_rows, n_items) for users' histories.

        ``fold_in`` is CSR of shape (n_rows, n_items) over the training item vocabulary; users
        need not have been seen in training (autoencoders score new users from their history).
        Callers batch the rows (see ``recvae.batching.row_batches``); known items are not masked.
        Each call returns a new array, which the caller owns and may overwrite.
        """
        self._check_fitted()
        if not sp.issparse(fold_in):
            raise RecvaeError(f"{self.name}: expected a scipy CSR matrix, got {type(fold_in).__name__}")
        if fold_in.shape[1] != self.n_items:
            raise RecvaeError(
                f"{self.name}: expected a CSR matrix with {self.n_items} columns (the training "
                f"items), got {fold_in.shape[1]}"
            )
        return np.asarray(self._score(fold_in.tocsr()), dtype=np.float32)

    @property
    def n_items(self) -> int:
        self._check_fitted()
        assert self.item_ids_ is not None
        return len(self.item_ids_)

    def refit_params(self) -> dict[str, Any]:
        """Hyper-parameters to override when this fitted model is refitted on training +
        validation (the selected epoch count of a model that trains in epochs; none here)."""
        return {}

    def params(self) -> dict[str, Any]:
        """Hyper-parameters as given to the constructor."""
        from dataclasses import fields

        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the model (config, item vocabulary, learned state) to a directory, atomically.

        A folder that exists already is refused unless ``overwrite`` (then it is replaced
        whole, only once the new one is complete)."""
        self._check_fitted()
        check_writable(path, overwrite=overwrite)
        with atomic_dir(path) as tmp:
            meta = {"model": self.name, "params": self.params(), "format": MODEL_FORMAT}
            (tmp / MODEL_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
            pd.DataFrame({"item_id": self.item_ids_}).to_parquet(tmp / "items.parquet", index=False)
            self._save_state(tmp)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Recommender:
        """Load a model saved by :meth:`save`; on a subclass, checks the saved model's type."""
        root = Path(path)
        meta = read_model_meta(root)
        if cls is not Recommender and meta["model"] != cls.name:
            raise RecvaeError(f"{root}: holds a {meta['model']!r} model, expected {cls.name!r}")
        from recvae.models import create_model

        model = create_model(meta["model"], meta["params"], where=str(root / MODEL_FILE))
        model.item_ids_ = read_parquet_column(root / "items.parquet", "item_id")
        model._load_state(root)
        return model

    def check_items(self, item_ids: np.ndarray, what: str = "the data") -> None:
        """Raise unless ``item_ids`` is exactly this model's training item vocabulary, in order."""
        self._check_fitted()
        assert self.item_ids_ is not None
        if len(item_ids) != len(self.item_ids_) or not np.array_equal(
            np.asarray(item_ids).astype(str), self.item_ids_.astype(str)
        ):
            raise RecvaeError(
                f"{self.name}: item vocabulary of {what} ({len(item_ids)} items) does not match the "
                f"model's ({len(self.item_ids_)} items); train the model on this dataset"
            )

    def _check_fitted(self) -> None:
        if self.item_ids_ is None:
            raise NotFittedError(f"{self.name}: model is not fitted; call fit() or load() first")


def read_model_meta(root: Path) -> dict[str, Any]:
    """The ``recvae_model.json`` of a saved model directory, its fields checked."""
    mpath = root / MODEL_FILE
    if not mpath.is_file():
        raise RecvaeError(f"{root}: not a saved recvae model (no {MODEL_FILE})")
    meta = read_json(mpath, "a recvae model description")
    if meta.get("format") != MODEL_FORMAT:
        raise RecvaeError(
            f"{mpath}: format: model format {meta.get('format')!r}, expected {MODEL_FORMAT}; "
            "save the model again with this version"
        )
    if not isinstance(meta.get("model"), str):
        raise RecvaeError(f"{mpath}: model: expected a model name, got {meta.get('model')!r}")
    if not isinstance(meta.get("params"), dict):
        raise RecvaeError(f"{mpath}: params: expected a mapping, got {meta.get('params')!r}")
    return meta


def load_state_array(path: Path, model: str, shape: tuple[int | None, ...]) -> np.ndarray:
    """A learned array saved by ``_save_state`` (never unpickled), which must hold floats of
    ``shape`` (``None``: any length): a file from another model or dataset is one error naming it.
    """
    shown = "(" + ", ".join("*" if n is None else str(n) for n in shape) + ")"
    array = load_npy(path, f"the {model} state array of shape {shown}")
    fits = array.ndim == len(shape) and all(
        n is None or n == m for n, m in zip(shape, array.shape, strict=True)
    )
    if not fits or array.dtype.kind != "f":
        raise RecvaeError(
            f"{path}: {array.dtype} array of shape {array.shape}; expected floats of shape {shown} "
            f"(a {model} over the {shape[0]} items of items.parquet)"
        )
    return array


def training_matrix(dataset: Dataset, model: str) -> sp.csr_matrix:
    """``dataset.train`` as CSR, or a RecvaeError when it holds no interactions."""
    train = dataset.train
    if not sp.issparse(train):
        raise RecvaeError(
            f"{model}: expected the training matrix as scipy CSR, got {type(train).__name__}"
        )
    if train.shape[0] == 0 or train.shape[1] == 0 or train.nnz == 0:
        raise RecvaeError(
            f"{model}: the training matrix {train.shape[0]}x{train.shape[1]} is empty (no "
            "interactions); check the dataset's split"
        )
    return train.tocsr()


def check_writable(path: str | os.PathLike, *, overwrite: bool) -> None:
    """Raise unless a model may be saved at ``path``: it does not exist, or ``overwrite``."""
    target = Path(path)
    if target.exists() and not overwrite:
        what = "a saved model" if (target / MODEL_FILE).is_file() else "a folder"
        raise RecvaeError(
            f"{target}: {what} exists already; save elsewhere, or replace it with overwrite=True "
            "(recvae train: --overwrite)"
        )
    if target.exists() and not target.is_dir():
        raise RecvaeError(f"{target}: exists and is not a folder; expected a model folder")
