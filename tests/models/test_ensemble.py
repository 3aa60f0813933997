"""The ensemble model: a weighted sum of per-user normalized member scores, saved as its members'
own folders, and models compared by identity."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from recvae.errors import RecvaeError
from recvae.models import MODEL_NAMES, create_model, load_model
from recvae.models.ease import EASE
from recvae.models.ensemble import Ensemble, normalized, row_stats
from recvae.models.implicit_models import ItemKNN
from recvae.models.popularity import Popularity
from tests.helpers import random_csr, tiny_dataset


@pytest.fixture(scope="module")
def members() -> dict:
    ds = tiny_dataset()
    return {"ease": EASE(l2=1.0, dtype="float32").fit(ds), "knn": ItemKNN(k=5).fit(ds),
            "pop": Popularity().fit(ds)}


def reference(scores: np.ndarray, fold_in: sp.csr_matrix) -> np.ndarray:
    """Per-row z-scores over the items outside the row's fold-in, by masking (no shortcuts)."""
    out = np.empty_like(scores, dtype=np.float64)
    for r in range(scores.shape[0]):
        unseen = np.ones(scores.shape[1], bool)
        unseen[fold_in[r].indices] = False
        mean, std = scores[r, unseen].mean(), scores[r, unseen].std()
        out[r] = (scores[r] - mean) / (std if std > 0 else 1.0)
    return out


def test_one_hot_weights_reproduce_the_member_exactly(members: dict) -> None:
    fold_in = tiny_dataset().test.fold_in
    for name, model in members.items():
        weights = {n: float(n == name) for n in members}
        raw = Ensemble.of(members, weights, normalize="none")
        assert raw.members == [name]  # a member of weight 0 is not kept
        np.testing.assert_array_equal(raw.score(fold_in), model.score(fold_in))
        z = Ensemble.of(members, weights, normalize="zscore").score(fold_in)
        np.testing.assert_allclose(z, reference(model.score(fold_in), fold_in), rtol=1e-5, atol=1e-5)


def test_a_blend_is_the_weighted_sum_of_normalized_scores(members: dict) -> None:
    fold_in = tiny_dataset().test.fold_in
    weights = {"ease": 0.5, "knn": 0.3, "pop": 0.2}
    expected = sum(w * reference(members[n].score(fold_in), fold_in) for n, w in weights.items())
    got = Ensemble.of(members, weights).score(fold_in)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_row_stats_skip_the_fold_in_items() -> None:
    scores = np.random.default_rng(0).normal(size=(6, 9)).astype(np.float32)
    fold_in = random_csr(6, 9, 0.3, seed=1)
    fold_in[5] = 0  # a row without history
    fold_in.eliminate_zeros()
    mean, std, low, high = row_stats(scores, fold_in)
    for r in range(6):
        unseen = np.setdiff1d(np.arange(9), fold_in[r].indices)
        v = scores[r, unseen].astype(np.float64)
        np.testing.assert_allclose([mean[r], std[r], low[r], high[r]], [v.mean(), v.std(), v.min(), v.max()],
                                   rtol=1e-6, atol=1e-6)
    minmax = normalized(scores.copy(), fold_in, "minmax")
    for r in range(6):
        unseen = np.setdiff1d(np.arange(9), fold_in[r].indices)
        assert minmax[r, unseen].min() == pytest.approx(0.0) and minmax[r, unseen].max() == pytest.approx(1.0)


def test_save_and_load_round_trip_without_pickle(members: dict, tmp_path: Path, monkeypatch) -> None:
    fold_in = tiny_dataset().test.fold_in
    model = Ensemble.of(members, {"ease": 0.6, "knn": 0.4, "pop": 0.0})
    path = model.save(tmp_path / "ensemble")
    assert sorted(p.name for p in (path / "members").iterdir()) == ["ease", "knn", "members.json"]

    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("loading an ensemble unpickled something")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    loaded = load_model(path)
    assert isinstance(loaded, Ensemble) and loaded.members == ["ease", "knn"] and loaded.weights == [0.6, 0.4]
    np.testing.assert_array_equal(loaded.score(fold_in), model.score(fold_in))


def test_bad_ensembles_are_refused(members: dict) -> None:
    with pytest.raises(RecvaeError, match="weights sum to 0.5; expected 1"):
        Ensemble(members=["a", "b"], weights=[0.2, 0.3])
    with pytest.raises(RecvaeError, match=r"ensemble\.a: expected a weight ≥ 0"):
        Ensemble(members=["a", "b"], weights=[-0.5, 1.5])
    with pytest.raises(RecvaeError, match="normalize must be one of zscore, minmax, none"):
        Ensemble(members=["a", "b"], weights=[0.5, 0.5], normalize="rank")
    with pytest.raises(RecvaeError, match="no member of ease, knn, pop has a weight above 0"):
        Ensemble.of(members, {})
    with pytest.raises(RecvaeError, match="built from fitted members"):
        Ensemble(members=["a", "b"], weights=[0.5, 0.5]).fit(tiny_dataset())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_models_compare_by_identity(name: str) -> None:
    """Two models built alike are two models: ``==`` is identity, never an elementwise array
    comparison (which raised on fitted models) nor equal hyper-parameters."""
    a, b = create_model(name, {}), create_model(name, {})
    assert a == a and a != b and not (a == b)
