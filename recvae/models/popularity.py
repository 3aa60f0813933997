"""Popularity: every user gets the same ranking, items ordered by how many training users have them.

The floor every personalised model must clear.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import scipy.sparse as sp

from recvae.data.dataset import Dataset
from recvae.io import save_npy
from recvae.models.base import (
    Callback,
    Recommender,
    load_state_array,
    report_fit_seconds,
    training_matrix,
)


@dataclass(eq=False)
class Popularity(Recommender):
    """Scores each item by the number of training users who interacted with it.

    ``counts_`` has shape (n_items,), float32; ``score`` repeats it for every row, whatever the
    user's history (known items are masked by the evaluation, not here).

    Example::

        model = Popularity().fit(dataset)
        scores = model.score(dataset.test.fold_in[:100])   # (100, n_items), identical rows
    """

    name: ClassVar[str] = "popularity"
    counts_: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def fit(
        self,
        dataset: Dataset,
        *,
        callbacks: Sequence[Callback] = (),
        show_progress: bool = False,
        checkpoint_dir: str | os.PathLike | None = None,
        resume: bool = False,
    ) -> Popularity:
        """Count the distinct training users per item."""
        start = time.perf_counter()
        train = training_matrix(dataset, self.name)
        # distinct users, whatever the stored values (play counts, confidences)
        self.counts_ = np.bincount(train.indices[train.data != 0], minlength=train.shape[1]).astype(
            np.float32
        )
        self.item_ids_ = dataset.item_ids
        report_fit_seconds(callbacks, start)
        return self

    def _score(self, fold_in: sp.csr_matrix) -> np.ndarray:
        assert self.counts_ is not None
        return np.broadcast_to(self.counts_, (fold_in.shape[0], len(self.counts_))).copy()

    def _save_state(self, path: Path) -> None:
        assert self.counts_ is not None
        save_npy(path / "counts.npy", self.counts_)

    def _load_state(self, path: Path) -> None:
        self.counts_ = load_state_array(path / "counts.npy", self.name, (self.n_items,))
