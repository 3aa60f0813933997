"""An ensemble: a weighted sum of fitted models' scores, each normalized per user.

Members are fitted models (any :class:`~recvae.models.base.Recommender`); the weights are chosen
elsewhere, on validation (:mod:`recvae.run.ensemble`). Scores are normalized per user over the
items the user has not interacted with (``zscore``: minus the mean, over the standard deviation;
``minmax``: onto [0, 1]; ``none``), so members on different scales add up. A member with weight 0
is not kept. Saved as a folder per member under ``members/`` (each a saved recvae model: no
pickle), so a served ensemble loads its members from code like any model.

Example::

    model = Ensemble.of({"ease": ease, "mult-vae": vae}, {"ease": 0.4, "mult-vae": 0.6})
    scores = model.score(dataset.test.fold_in[:100])   # 0.4·z(ease) + 0.6·z(mult-vae)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import scipy.sparse as sp

from recvae.data.dataset import Dataset
from recvae.errors import RecvaeError
from recvae.models.base import Callback, Recommender
from recvae.models.params import is_real

NORMALIZE = ("zscore", "minmax", "none")
MEMBERS_DIR = "members"


@dataclass(eq=False)
class Ensemble(Recommender):
    """``Σ weights[i] · normalize(members[i].score)``; ``members`` names the member models in
    order, ``weights`` are non-negative and sum to 1. The fitted members are ``models_``."""

    name: ClassVar[str] = "ensemble"
    members: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    normalize: str = "zscore"
    models_: list[Recommender] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        # no weights: not chosen yet (a pipeline's ensemble stage before its weight search)
        if self.weights and len(self.weights) != len(self.members):
            raise RecvaeError(f"ensemble: {len(self.weights)} weights for {len(self.members)} members")
        check_weights(dict(zip(self.members, self.weights, strict=False)), self.members, "ensemble")
        if self.normalize not in NORMALIZE:
            raise RecvaeError(
                f"ensemble: normalize must be one of {', '.join(NORMALIZE)}, got {self.normalize!r}"
            )

    @classmethod
    def of(
        cls, models: Mapping[str, Recommender], weights: Mapping[str, float], normalize: str = "zscore",
    ) -> Ensemble:
        """The ensemble of fitted ``models`` (by member name) with ``weights``; members of weight
        0 are left out. Every model must have the same item vocabulary."""
        kept = [name for name in models if weights.get(name, 0.0) > 0]
        if not kept:
            raise RecvaeError(f"ensemble: no member of {', '.join(models)} has a weight above 0")
        ensemble = cls(members=kept, weights=[float(weights[n]) for n in kept], normalize=normalize)
        first = models[kept[0]]
        for name in kept:
            models[name].check_items(first.item_ids_, what=f"ensemble member {kept[0]}")
        ensemble.models_ = [models[n] for n in kept]
        ensemble.item_ids_ = first.item_ids_
        return ensemble

    def fit(
        self, dataset: Dataset, *, callbacks: Sequence[Callback] = (), show_progress: bool = False,
        checkpoint_dir: str | os.PathLike | None = None, resume: bool = False,
    ) -> Ensemble:
        """Refused: an ensemble is built from fitted members (:meth:`of`), its weights chosen on
        validation by a pipeline's ``ensemble:`` stage."""
        raise RecvaeError(
            "ensemble: built from fitted members by a pipeline's ensemble: block (or Ensemble.of); "
            "it has nothing to fit on its own"
        )

    def _score(self, fold_in: sp.csr_matrix) -> np.ndarray:
        out: np.ndarray | None = None
        for weight, model in zip(self.weights, self.models_, strict=True):
            scores = normalized(model.score(fold_in), fold_in, self.normalize)
            scores *= np.float32(weight)
            out = scores if out is None else np.add(out, scores, out=out)
        assert out is not None
        return out

    def _save_state(self, path: Path) -> None:
        for name, model in zip(self.members, self.models_, strict=True):
            model.save(path / MEMBERS_DIR / _folder(name))
        (path / MEMBERS_DIR / "members.json").write_text(json.dumps(self.members) + "\n")

    def _load_state(self, path: Path) -> None:
        from recvae.models import load_model

        self.models_ = []
        for name in self.members:
            model = load_model(path / MEMBERS_DIR / _folder(name))
            model.check_items(self.item_ids_, what=f"the ensemble's items.parquet ({path})")
            self.models_.append(model)


def normalized(scores: np.ndarray, fold_in: sp.csr_matrix, how: str) -> np.ndarray:
    """``scores`` (n_rows, n_items), float32, normalized per row over the items not in the row's
    fold-in (in place); fold-in items get a normalized value too, which rankings mask."""
    scores = np.asarray(scores, dtype=np.float32)
    if how == "none":
        return scores
    mean, std, low, high = row_stats(scores, fold_in)
    shift, scale = (mean, std) if how == "zscore" else (low, high - low)
    scores -= shift[:, None].astype(np.float32)
    scores /= np.where(scale > 0, scale, 1.0)[:, None].astype(np.float32)
    return scores


def normalize_values(values: np.ndarray, stats: np.ndarray, how: str) -> np.ndarray:
    """Raw scores ``values`` (n_rows, m) normalized with :func:`row_stats`' columns ``stats``
    (n_rows, 4): the same transform as :func:`normalized` applies to whole rows."""
    if how == "none":
        return values.astype(np.float32)
    mean, std, low, high = stats.T
    shift, scale = (mean, std) if how == "zscore" else (low, high - low)
    return ((values - shift[:, None]) / np.where(scale > 0, scale, 1.0)[:, None]).astype(np.float32)


def row_stats(scores: np.ndarray, fold_in: sp.csr_matrix) -> tuple[np.ndarray, ...]:
    """Per row, over the items not in the row's fold-in: mean, standard deviation, min, max
    (float64, each (n_rows,))."""
    n_rows, n_items = scores.shape
    rows = np.repeat(np.arange(n_rows), np.diff(fold_in.indptr))
    seen = scores[rows, fold_in.indices].astype(np.float64)
    n = np.maximum(n_items - np.bincount(rows, minlength=n_rows), 1)
    # sums over all items less the fold-in items' share: no (n_rows, n_items) mask is built
    total = scores.sum(axis=1, dtype=np.float64) - np.bincount(rows, seen, n_rows)
    squares = np.square(scores, dtype=np.float64).sum(axis=1) - np.bincount(rows, seen**2, n_rows)
    mean = total / n
    std = np.sqrt(np.maximum(squares / n - mean**2, 0.0))
    if len(rows):
        masked = scores.copy()
        masked[rows, fold_in.indices] = np.nan
        low, high = np.nanmin(masked, axis=1), np.nanmax(masked, axis=1)
    else:
        low, high = scores.min(axis=1), scores.max(axis=1)
    return mean, std, low.astype(np.float64), high.astype(np.float64)


def check_weights(weights: Mapping[str, float], members: Sequence[str], where: str) -> None:
    """Fixed ensemble weights: one per member, non-negative, summing to 1."""
    unknown = [m for m in weights if m not in members]
    if unknown:
        raise RecvaeError(f"{where}: weight for {unknown[0]!r}, which is not a member ({', '.join(members)})")
    for member, w in weights.items():
        if not is_real(w) or w < 0:
            raise RecvaeError(f"{where}.{member}: expected a weight ≥ 0, got {w!r}")
    total = sum(weights.values())
    if weights and not math.isclose(total, 1.0, abs_tol=1e-6):
        raise RecvaeError(f"{where}: the weights sum to {total:g}; expected 1")


def _folder(member: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in member)
