"""The baselines: EASE, EDLAE, ALS, BPR, item-kNN and popularity (recvae/models/ease.py etc.)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import recvae.models.ease as ease_module
from recvae.data.dataset import Dataset, Part
from recvae.errors import RecvaeError
from recvae.models import EpochReport, load_model, model_class
from recvae.models.ease import EASE
from recvae.models.implicit_models import ALS, BPR, ItemKNN
from recvae.models.popularity import Popularity


# ----------------------------------------------------------------- data
def csr(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    """Binary float32 CSR with row r holding the items ``rows[r]``."""
    indptr = np.cumsum([0] + [len(r) for r in rows])
    indices = np.array([i for r in rows for i in r], dtype=np.int32)
    m = sp.csr_matrix(
        (np.ones(len(indices), np.float32), indices, indptr), shape=(len(rows), n_items)
    )
    m.sort_indices()
    return m


def planted_dataset(seed: int = 0, n_train: int = 300, n_eval: int = 60) -> Dataset:
    """Two clusters: users of cluster c take 10 items of cluster c (40 items, 20 per cluster),
    drawn with a power-law popularity inside the cluster. Evaluation users: 7 fold-in, 3 held out.
    """
    rng = np.random.default_rng(seed)
    n_items, per_cluster = 40, 20
    p = 1.0 / np.arange(1, per_cluster + 1) ** 0.8
    p /= p.sum()

    def users(n: int) -> list[list[int]]:
        out = []
        for u in range(n):
            base = (u % 2) * per_cluster
            out.append(list(base + rng.choice(per_cluster, size=10, replace=False, p=p)))
        return out

    def part(n: int, first_user: int) -> Part:
        rows = users(n)
        return Part(
            fold_in=csr([r[:7] for r in rows], n_items),
            holdout=csr([r[7:] for r in rows], n_items),
            users=np.arange(first_user, first_user + n),
        )

    return Dataset(
        train=csr(users(n_train), n_items),
        train_users=np.arange(n_train),
        validation=part(n_eval, n_train),
        test=part(n_eval, n_train + n_eval),
        user_ids=np.arange(n_train + 2 * n_eval),
        item_ids=np.array([f"item{i}" for i in range(n_items)]),
        manifest={},
    )


def random_dataset(
    n_users: int = 80, n_items: int = 30, density: float = 0.15, seed: int = 0
) -> Dataset:
    x = sp.random(
        n_users, n_items, density=density, format="csr", dtype=np.float32, random_state=seed
    )
    x.data[:] = 1.0
    evaluation = Part(fold_in=x[:10], holdout=x[10:20], users=np.arange(10))
    return Dataset(
        train=x,
        train_users=np.arange(n_users),
        validation=evaluation,
        test=evaluation,
        user_ids=np.arange(n_users),
        item_ids=np.arange(n_items),
        manifest={},
    )


def recall_at_k(
    scores: np.ndarray, fold_in: sp.csr_matrix, holdout: sp.csr_matrix, k: int
) -> float:
    """Mean over users with targets of hits / min(k, |held-out|), fold-in items masked."""
    scores = scores.astype(np.float64).copy()
    scores[fold_in.nonzero()] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    truth = holdout.toarray() > 0
    hits = np.take_along_axis(truth, top, axis=1).sum(axis=1)
    n_true = truth.sum(axis=1)
    keep = n_true > 0
    return float(np.mean(hits[keep] / np.minimum(k, n_true[keep])))


FAST = {
    "ease": {"l2": 10.0},
    "edlae": {"l2": 10.0, "dropout": 0.25},
    "als": {"factors": 8, "iterations": 10, "random_state": 0, "num_threads": 1},
    "bpr": {
        "factors": 8,
        "iterations": 50,
        "learning_rate": 0.05,
        "random_state": 0,
        "num_threads": 1,
    },
    "item-knn": {"k": 10},
    "popularity": {},
}
MODELS = list(FAST)


def make(name: str, **overrides):
    return model_class(name)(**{**FAST[name], **overrides})


# ----------------------------------------------------------------- EASE
def naive_ease(x: sp.csr_matrix, l2: float) -> np.ndarray:
    g = (x.T @ x).toarray().astype(np.float64)
    p = np.linalg.inv(g + l2 * np.eye(g.shape[0]))
    b = np.eye(g.shape[0]) - p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    return b


def test_ease_equals_closed_form_with_zero_diagonal():
    ds = random_dataset()
    model = EASE(l2=3.0).fit(ds)
    assert model.B_.dtype == np.float32 and model.B_.shape == (30, 30)
    np.testing.assert_allclose(model.B_, naive_ease(ds.train, 3.0), rtol=1e-5, atol=1e-6)
    assert np.all(np.diag(model.B_) == 0)


@pytest.mark.parametrize("block", [7, 30, 4096])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_ease_blocked_in_place_solve(monkeypatch, block, dtype):
    # blocks that do and do not divide n_items exercise every path of the in-place passes
    monkeypatch.setattr(ease_module, "BLOCK", block)
    ds = random_dataset(n_users=200, n_items=45, seed=3)
    b = ease_module.ease_weights(ds.train, 5.0, np.dtype(dtype))
    assert b.dtype == np.float32 and b.shape == (45, 45) and b.flags.c_contiguous
    tol = 1e-6 if dtype == "float64" else 1e-4
    np.testing.assert_allclose(b, naive_ease(ds.train, 5.0), atol=tol)
    assert np.all(np.diag(b) == 0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ease_inverse_overwrites_its_input(dtype):
    rng = np.random.default_rng(0)
    x = rng.random((80, 40))
    a = (x.T @ x + 2.0 * np.eye(40)).astype(dtype)
    expected = np.linalg.inv(a.astype(np.float64))
    before = a.ctypes.data
    ease_module.invert_spd_lower(a)
    assert a.ctypes.data == before and a.flags.c_contiguous
    lower = np.tril_indices(40)
    np.testing.assert_allclose(a[lower], expected[lower], rtol=1e-3 if dtype == np.float32 else 1e-9)


def test_ease_float32_agrees_with_float64():
    ds = random_dataset(n_users=300, n_items=60, seed=1)
    b64 = EASE(l2=20.0).fit(ds).B_
    b32 = EASE(l2=20.0, dtype="float32").fit(ds).B_
    np.testing.assert_allclose(b32, b64, atol=1e-5)


def test_ease_reports_fit_seconds_once():
    reports: list[EpochReport] = []
    EASE(l2=1.0).fit(random_dataset(), callbacks=[reports.append])
    assert len(reports) == 1 and reports[0].epoch == 0
    assert set(reports[0].metrics) == {"fit_seconds"} and reports[0].metrics["fit_seconds"] >= 0


def test_ease_not_positive_definite():
    ds = random_dataset()
    # an item nobody has: XᵀX is singular, and l2 = 0 cannot fix it
    ds.train = sp.csr_matrix(ds.train.multiply(np.arange(30) > 0))
    with pytest.raises(RecvaeError, match="positive definite"):
        EASE(l2=0.0).fit(ds)


# ----------------------------------------------------------------- every model
@pytest.mark.parametrize("name", MODELS)
def test_fit_score_save_load(tmp_path, name):
    ds = random_dataset()
    model = make(name)
    assert model.fit(ds) is model
    assert np.array_equal(model.item_ids_, ds.item_ids)
    scores = model.score(ds.test.fold_in)
    assert scores.shape == (10, 30) and scores.dtype == np.float32
    assert np.all(np.isfinite(scores))

    loaded = load_model(model.save(tmp_path / name))
    assert type(loaded) is type(model) and loaded.params() == model.params()
    np.testing.assert_array_equal(loaded.score(ds.test.fold_in), scores)
    assert not any(p.suffix == ".pkl" for p in (tmp_path / name).iterdir())


@pytest.mark.parametrize("name", MODELS)
def test_planted_clusters_beat_random(name):
    ds = planted_dataset()
    model = make(name).fit(ds)
    part = ds.test
    recall = recall_at_k(model.score(part.fold_in), part.fold_in, part.holdout, k=5)
    # random ranking of the 33 unseen items: E[hits] = 5·3/33, recall = E[hits] / min(5, 3)
    random_recall = 5 * 3 / 33 / 3
    # measured: EASE .54, EDLAE .53, ALS .51, BPR .41, item-kNN .59, popularity .24 (random .15)
    margin = 1.5 if name == "popularity" else 2.0  # popularity cannot see the clusters
    assert recall > margin * random_recall, f"{name}: recall@5 {recall:.3f}"


@pytest.mark.parametrize("name", MODELS)
def test_empty_training_matrix(name):
    ds = random_dataset()
    ds.train = sp.csr_matrix(ds.train.shape, dtype=np.float32)
    with pytest.raises(RecvaeError, match="no interactions"):
        make(name).fit(ds)


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (EASE, {"l2": -1.0}),
        (EASE, {"l2": float("nan")}),
        (EASE, {"dtype": "float16"}),
        (ALS, {"factors": 0}),
        (ALS, {"factors": 2.5}),
        (ALS, {"regularization": -0.1}),
        (ALS, {"alpha": 0.0}),
        (ALS, {"iterations": 0}),
        (ALS, {"num_threads": -1}),
        (ALS, {"random_state": "seed"}),
        (BPR, {"factors": -3}),
        (BPR, {"learning_rate": 0.0}),
        (BPR, {"fold_in_regularization": 0.0}),
        (ItemKNN, {"similarity": "jaccard"}),
        (ItemKNN, {"k": 0}),
        (ItemKNN, {"b": 1.5}),
        (ItemKNN, {"k1": -1.0}),
    ],
)
def test_bad_hyperparameters(cls, kwargs):
    with pytest.raises(RecvaeError, match=next(iter(kwargs))):
        cls(**kwargs)


# ----------------------------------------------------------------- ALS
def test_als_fold_in_matches_implicit():
    from implicit.cpu.als import AlternatingLeastSquares

    ds = planted_dataset()
    params = {"factors": 8, "iterations": 15, "regularization": 0.05, "alpha": 5.0}
    model = ALS(**params, random_state=0, num_threads=1).fit(ds)

    ref = AlternatingLeastSquares(**params, random_state=0, num_threads=1)
    ref.fit(ds.train, show_progress=False)
    np.testing.assert_allclose(model.item_factors_, ref.item_factors, rtol=1e-5, atol=1e-6)

    users = np.arange(50)
    rows = ds.train[users]
    # fold-in of training users ≈ their learned factors (implicit's fit ends with a CG user solve)
    folded = model.user_factors(rows)
    cos = np.sum(folded * ref.user_factors[users], axis=1) / (
        np.linalg.norm(folded, axis=1) * np.linalg.norm(ref.user_factors[users], axis=1)
    )
    assert cos.min() > 0.99

    # ... and the ranking is implicit's own recommend(recalculate_user=True)
    ids, ref_scores = ref.recommend(users, rows, N=10, recalculate_user=True)
    scores = model.score(rows)
    scores[rows.nonzero()] = -np.inf
    np.testing.assert_allclose(
        np.take_along_axis(scores, ids, axis=1), ref_scores, rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(-np.sort(-scores, axis=1)[:, :10], ref_scores, rtol=1e-4, atol=1e-5)


def test_als_reports_each_epoch():
    reports: list[EpochReport] = []
    make("als", iterations=4, calculate_training_loss=True).fit(
        random_dataset(), callbacks=[reports.append]
    )
    assert [r.epoch for r in reports] == [0, 1, 2, 3]
    assert all({"epoch_seconds", "train/loss"} <= set(r.metrics) for r in reports)


# ----------------------------------------------------------------- BPR
def test_bpr_fold_in_is_ridge_on_item_factors_with_bias():
    ds = random_dataset()
    reports: list[EpochReport] = []
    model = make("bpr", iterations=5, factors=6).fit(ds, callbacks=[reports.append])
    assert [r.epoch for r in reports] == list(range(5)) and "train/auc" in reports[0].metrics
    q = model.item_factors_.astype(np.float64)
    assert q.shape == (30, 7)  # implicit appends the item-bias column
    x = ds.test.fold_in.toarray().astype(np.float64)
    lam = model.fold_in_regularization
    u = np.linalg.solve(q.T @ q + lam * np.eye(7), q.T @ x.T).T
    np.testing.assert_allclose(model.user_factors(ds.test.fold_in), u, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.score(ds.test.fold_in), u @ q.T, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------- item-kNN
@pytest.mark.filterwarnings("ignore::implicit.utils.ParameterWarning")
@pytest.mark.parametrize("similarity", ["cosine", "bm25"])
def test_item_knn_scores_are_fold_in_times_similarity(similarity):
    from implicit.nearest_neighbours import BM25Recommender, CosineRecommender

    ds = planted_dataset()
    model = ItemKNN(similarity=similarity, k=5).fit(ds)
    ref = BM25Recommender(K=5) if similarity == "bm25" else CosineRecommender(K=5)
    ref.fit(ds.train, show_progress=False)
    np.testing.assert_allclose(model.similarity_.toarray(), ref.similarity.toarray(), rtol=1e-6)
    assert np.all(model.similarity_.getnnz(axis=1) <= 5)

    fold_in = ds.test.fold_in
    scores = model.score(fold_in)
    np.testing.assert_allclose(scores, (fold_in @ model.similarity_).toarray(), rtol=1e-6)
    # implicit's recommend sums the same similarities over the user's items (it pads with score-0
    # items, possibly already liked ones, when fewer than N items have a neighbour: skip those)
    for u in range(10):
        ids, ref_scores = ref.recommend(u, fold_in[u], N=5)
        found = ref_scores > 0
        assert found.any()
        np.testing.assert_allclose(scores[u, ids[found]], ref_scores[found], rtol=1e-5)


# ----------------------------------------------------------------- popularity
def test_popularity_ranks_most_popular_first():
    train = csr([[0, 2], [2], [1, 2], [1]], 3)  # item 2: 3 users, item 1: 2, item 0: 1
    ds = random_dataset(n_items=3)
    ds.train, ds.train_users = train, np.arange(4)
    scores = Popularity().fit(ds).score(csr([[0], [], [1, 2]], 3))
    np.testing.assert_array_equal(scores, np.tile([1.0, 2.0, 3.0], (3, 1)))
    assert np.all(np.argmax(scores, axis=1) == 2)
