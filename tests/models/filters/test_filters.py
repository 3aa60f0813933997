"""GF-CF, BSPM and ChebyCF (recvae/models/filters): each model's scores against the paper's formula
computed densely in numpy (eigen/SVD decompositions of the small P, not our operators), the
degree-0 guard, fold-in of new users, save/load, parameters, the registry and the caches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

import recvae.models.filters.graph as graph_module
import recvae.models.filters.models as models_module
from recvae.data.dataset import Dataset, Part
from recvae.errors import RecvaeError
from recvae.models import create_model, load_model, model_class
from recvae.models.filters import BSPM, GFCF, ChebyCF
from recvae.models.filters.cache import ArrayCache, digest_csr
from recvae.models.filters.graph import ItemGraph, dense_is_faster
from recvae.models.filters.models import plateau_coefficients
from tests.helpers import random_csr

N_USERS, N_ITEMS = 90, 30


def dataset(seed: int = 0, empty_items: tuple[int, ...] = ()) -> Dataset:
    """Random binary training rows; evaluation users (not training users) with their own rows.
    ``empty_items`` get no training interaction, but the evaluation users may hold them."""
    train = random_csr(N_USERS, N_ITEMS, 0.2, seed)
    if empty_items:
        keep = np.ones(N_ITEMS, dtype=np.float32)
        keep[list(empty_items)] = 0
        train = sp.csr_matrix(train.multiply(keep[None, :]), dtype=np.float32)
        train.eliminate_zeros()
    evaluation = Part(
        fold_in=random_csr(12, N_ITEMS, 0.3, seed + 1),
        holdout=random_csr(12, N_ITEMS, 0.1, seed + 2),
        users=np.arange(N_USERS, N_USERS + 12),
    )
    return Dataset(
        train=train, train_users=np.arange(N_USERS), validation=evaluation, test=evaluation,
        user_ids=np.arange(N_USERS + 12), item_ids=np.array([f"i{j}" for j in range(N_ITEMS)]),
    )


@pytest.fixture(autouse=True)
def fresh_caches():
    """Each test starts (and leaves) with empty caches, so one test's SVD cannot hide another's."""
    graph_module.SVD_CACHE.clear()
    models_module.BASIS_CACHE.clear()
    yield
    graph_module.SVD_CACHE.clear()
    models_module.BASIS_CACHE.clear()


# ----------------------------------------------------------------- dense references
def reference_parts(train: np.ndarray, k: int):
    """R̃, P, the degree vector and the top-k right singular vectors, densely in float64."""
    du, di = train.sum(axis=1), train.sum(axis=0)
    with np.errstate(divide="ignore"):
        inv_u = np.where(du > 0, 1 / np.sqrt(du), 0.0)
        inv_i = np.where(di > 0, 1 / np.sqrt(di), 0.0)
    r_tilde = inv_u[:, None] * train * inv_i[None, :]
    _, s, vt = np.linalg.svd(r_tilde)
    assert s[k - 1] - s[k] > 1e-6  # a gap: the top-k subspace is well defined
    return r_tilde, r_tilde.T @ r_tilde, di, vt[:k].T


def power(di: np.ndarray, p: float) -> np.ndarray:
    return np.where(di > 0, np.abs(di) ** p, 0.0)


def reference_gfcf(train, r, alpha, k):
    _, p, di, v = reference_parts(train, k)
    ideal = (r * power(di, -0.5)) @ v @ v.T * power(di, 0.5)
    return r @ p + alpha * ideal


def reference_bspm(train, r, *, factor_dim, idl_beta, blur_time, blur_steps, sharpen_time,
                   sharpen_steps, solver, early_merge):
    """The solution of the authors' discretized ODEs as matrix polynomials: each Euler blurring step
    is ((1−τ)I + τP); a sharpening step is I − hP (Euler) or the Taylor polynomial
    Σ_{j≤4} (−hP)^j / j! (RK4, which any 4-stage 4th-order method is on a linear ODE)."""
    _, p, di, v = reference_parts(train, factor_dim)
    eye = np.eye(p.shape[0])
    tau = blur_time / blur_steps
    blur = np.linalg.matrix_power((1 - tau) * eye + tau * p, blur_steps)
    h = sharpen_time / sharpen_steps
    terms = 2 if solver == "euler" else 5
    step = sum(np.linalg.matrix_power(-h * p, j) / math.factorial(j) for j in range(terms))
    sharpen = np.linalg.matrix_power(step, sharpen_steps)
    ideal = (r * power(di, -0.5)) @ v @ v.T * power(di, 0.5)
    if early_merge:
        return (r @ blur + idl_beta * ideal) @ sharpen
    return r @ blur @ sharpen + idl_beta * ideal


def reference_chebycf(train, r, *, order, phi, eta, alpha, beta):
    """The filter evaluated on P's eigenvalues: h(P) = U p(1 − 2Λ) Uᵀ, with p the polynomial of
    degree K through the (node, sample) pairs of the authors' interpolation (numpy's chebfit)."""
    _, p, di, v = reference_parts(train, eta)
    j = np.arange(order + 1)
    extrema = np.round(np.cos(np.pi * (1 - j / order)), 3)
    samples = np.round(np.where(extrema < 0, 0.5 + 0.5 * np.abs(extrema) ** phi,
                                0.5 - 0.5 * np.abs(extrema) ** phi), 3)
    nodes = np.cos(np.pi * (2 * j + 1) / (2 * order + 2))[::-1]
    poly = np.polynomial.chebyshev.Chebyshev.fit(nodes, samples, order, domain=[-1, 1])
    lam, u = np.linalg.eigh(p)
    h = u @ np.diag(poly(1 - 2 * lam)) @ u.T
    x = r * power(di, -beta)
    return (x @ h + alpha * x @ v @ v.T) * power(di, beta)


# ----------------------------------------------------------------- the formulas
@pytest.mark.parametrize("alpha, k", [(0.3, 8), (0.0, 8), (1.5, 20)])
def test_gfcf_equals_the_dense_formula(alpha, k):
    ds = dataset()
    model = GFCF(alpha=alpha, k=k).fit(ds)
    expected = reference_gfcf(ds.train.toarray().astype(np.float64), ds.test.fold_in.toarray(), alpha, k)
    np.testing.assert_allclose(model.score(ds.test.fold_in), expected, rtol=1e-4, atol=1e-5)


BSPM_CASES = [
    {},  # the authors' Gowalla script, at a rank the tiny matrix allows
    {"early_merge": False},
    {"solver": "euler", "sharpen_steps": 3, "sharpen_time": 1.2},
    {"blur_time": 0.7, "blur_steps": 2, "sharpen_steps": 2, "idl_beta": 0.5},
]


@pytest.mark.parametrize("overrides", BSPM_CASES)
def test_bspm_equals_the_dense_formula(overrides):
    ds = dataset()
    params = {"factor_dim": 12, "idl_beta": 0.2, "blur_time": 1.0, "blur_steps": 1, "sharpen_time": 2.5,
              "sharpen_steps": 1, "solver": "rk4", "early_merge": True, **overrides}
    model = BSPM(**params).fit(ds)
    expected = reference_bspm(ds.train.toarray().astype(np.float64), ds.test.fold_in.toarray(), **params)
    np.testing.assert_allclose(model.score(ds.test.fold_in), expected, rtol=1e-4, atol=1e-5)


def test_the_arpack_svd_spans_the_dense_svds_top_subspace(monkeypatch):
    ds = dataset()
    _, _, _, v = reference_parts(ds.train.toarray().astype(np.float64), 8)
    monkeypatch.setattr(graph_module, "DENSE_SVD_ENTRIES", 0)  # as on a real catalogue: ARPACK
    ours = GFCF(k=8).fit(ds).ideal_.astype(np.float64)
    np.testing.assert_allclose(ours @ ours.T, v @ v.T, atol=1e-5)
    # ARPACK needs k < min(n_users, n_items)
    with pytest.raises(RecvaeError, match=r"gf-cf: k = 30, the ideal pass's rank, exceeds .*; set k ≤ 29"):
        GFCF(k=30).fit(ds)


def test_bspm_rk4_step_is_the_exponential_to_fourth_order():
    # one RK4 step of dy/dt = −yP is exp(−hP) up to h⁵: halving h cuts the gap ≈ 32-fold
    ds = dataset()
    train, r = ds.train.toarray().astype(np.float64), ds.test.fold_in.toarray()
    _, p, _, _ = reference_parts(train, 4)
    lam, u = np.linalg.eigh(p)
    gaps = []
    for h in (0.4, 0.2):
        model = BSPM(factor_dim=4, idl_beta=0.0, blur_time=0.0, sharpen_time=h).fit(ds)
        exact = r @ u @ np.diag(np.exp(-h * lam)) @ u.T
        gaps.append(np.abs(model.score(ds.test.fold_in) - exact).max())
    assert 20 < gaps[0] / gaps[1] < 40, gaps


@pytest.mark.parametrize(
    "params",
    [
        {"order": 8, "phi": 1.5, "eta": 10, "alpha": 0.2, "beta": 0.4},  # Gowalla's, η scaled down
        {"order": 3, "phi": 15.0, "eta": 6, "alpha": 0.1, "beta": 0.2},
        {"order": 5, "phi": 0.7, "eta": 6, "alpha": 0.0, "beta": 0.0},
    ],
)
def test_chebycf_equals_the_dense_formula(params):
    ds = dataset()
    model = ChebyCF(**params).fit(ds)
    expected = reference_chebycf(ds.train.toarray().astype(np.float64), ds.test.fold_in.toarray(), **params)
    np.testing.assert_allclose(model.score(ds.test.fold_in), expected, rtol=1e-4, atol=1e-5)


def test_the_plateau_passes_low_and_stops_high_frequencies():
    c = plateau_coefficients(8, 1.5)
    poly = np.polynomial.chebyshev.Chebyshev(c)
    # x = 1 − 2λ: λ = 1 (the smoothest signal) at x = −1 passes, λ = 0 at x = 1 is stopped
    assert poly(-1.0) == pytest.approx(1.0, abs=0.02) and poly(1.0) == pytest.approx(0.0, abs=0.02)
    assert np.all(np.diff(poly(np.linspace(-1, 1, 201))) <= 1e-3)  # non-increasing
    # the plateau at 1/2 over the middle of the spectrum widens with φ
    flatter = np.polynomial.chebyshev.Chebyshev(plateau_coefficients(8, 6.0))
    assert abs(flatter(-0.5) - 0.5) < 0.02 < abs(poly(-0.5) - 0.5)


# ----------------------------------------------------------------- degree 0, fold-in
@pytest.mark.parametrize(
    "model",
    [GFCF(k=6), BSPM(factor_dim=6), ChebyCF(eta=6), ChebyCF(eta=6, beta=0.0),
     GFCF(k=6, operator="dense"), BSPM(factor_dim=6, operator="dense")],
    ids=["gf-cf", "bspm", "chebycf", "chebycf-beta0", "gf-cf-dense", "bspm-dense"],
)
def test_an_item_without_training_interactions_scores_zero_not_nan(model):
    ds = dataset(empty_items=(3, 17))
    fold_in = ds.test.fold_in.tolil()
    fold_in[:, [3, 17]] = 1.0  # every evaluation user holds the two unseen items
    scores = model.fit(ds).score(fold_in.tocsr())
    assert np.all(np.isfinite(scores))
    assert np.all(scores[:, [3, 17]] == 0.0)
    assert np.abs(np.delete(scores, [3, 17], axis=1)).max() > 0


@pytest.mark.parametrize("name", ["gf-cf", "bspm", "chebycf"])
def test_new_users_are_scored_from_their_history_in_any_batch(name):
    ds = dataset()
    model = create_model(name, {"gf-cf": {"k": 6}, "bspm": {"factor_dim": 6}, "chebycf": {"eta": 6}}[name])
    model.fit(ds)
    new_users = random_csr(7, N_ITEMS, 0.25, seed=9)  # users the training matrix never saw
    scores = model.score(new_users)
    assert scores.shape == (7, N_ITEMS) and scores.dtype == np.float32
    # a user's scores depend on their own row only: alone, in another batch, in another order
    np.testing.assert_allclose(model.score(new_users[[4]]), scores[[4]], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(model.score(new_users[::-1]), scores[::-1], rtol=1e-5, atol=1e-7)
    # different histories, different scores; an empty history scores 0 (all filters are linear)
    assert not np.allclose(scores[0], scores[1])
    assert np.all(model.score(sp.csr_matrix((1, N_ITEMS), dtype=np.float32)) == 0)


@pytest.mark.parametrize("workers", [1, 3])
def test_scoring_in_chunks_and_threads_equals_scoring_at_once(monkeypatch, workers):
    ds = dataset()
    model = BSPM(factor_dim=6).fit(ds)
    monkeypatch.setattr(models_module, "available_cores", lambda: 1)
    whole = model.score(ds.test.fold_in)
    monkeypatch.setattr(models_module, "available_cores", lambda: workers)
    monkeypatch.setattr(models_module, "SIGNAL_BYTES", 4 * N_ITEMS * 5)  # chunks of 5 rows
    np.testing.assert_allclose(model.score(ds.test.fold_in), whole, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------- save / load, parameters, registry
@pytest.mark.parametrize(
    "model",
    [GFCF(alpha=0.4, k=5), BSPM(factor_dim=5, solver="euler", early_merge=False),
     ChebyCF(order=4, phi=2.0, eta=5, alpha=0.3, beta=0.25), ChebyCF(eta=5, alpha=0.0)],
    ids=["gf-cf", "bspm", "chebycf", "chebycf-no-ideal"],
)
def test_save_load_round_trips_exactly(tmp_path, model):
    ds = dataset()
    scores = model.fit(ds).score(ds.test.fold_in)
    path = model.save(tmp_path / model.name)
    assert {p.suffix for p in path.iterdir()} <= {".json", ".parquet", ".npz", ".npy"}
    loaded = load_model(path)
    assert type(loaded) is type(model) and loaded.params() == model.params()
    models_module.BASIS_CACHE.clear()  # the loaded model recomputes everything
    np.testing.assert_array_equal(loaded.score(ds.test.fold_in), scores)
    np.testing.assert_array_equal(loaded.item_ids_, ds.item_ids)


def test_load_refuses_state_of_another_shape(tmp_path):
    ds = dataset()
    path = GFCF(k=5).fit(ds).save(tmp_path / "m")
    np.save(path / "ideal.npy", np.zeros((N_ITEMS, 4), dtype=np.float32))
    with pytest.raises(RecvaeError, match=r"ideal\.npy: .*expected floats of shape \(30, 5\)"):
        load_model(path)


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (GFCF, {"alpha": -0.1}, "gf-cf: alpha must be a finite number ≥ 0, got -0.1"),
        (GFCF, {"k": 0}, "gf-cf: k must be a positive integer, got 0"),
        (GFCF, {"k": 2.5}, "gf-cf: k must be"),
        (GFCF, {"operator": "gpu"}, "gf-cf: unknown operator 'gpu'"),
        (BSPM, {"factor_dim": -1}, "bspm: factor_dim must be"),
        (BSPM, {"idl_beta": float("nan")}, "bspm: idl_beta must be"),
        (BSPM, {"sharpen_time": -2.5}, "bspm: sharpen_time must be"),
        (BSPM, {"sharpen_steps": 0}, "bspm: sharpen_steps must be"),
        (BSPM, {"blur_steps": True}, "bspm: blur_steps must be"),
        (BSPM, {"solver": "dopri5"}, "bspm: unknown solver 'dopri5': expected one of euler, rk4"),
        (BSPM, {"early_merge": "yes"}, "bspm: early_merge must be true or false, got 'yes'"),
        (ChebyCF, {"order": 0}, "chebycf: order must be a positive integer, got 0"),
        (ChebyCF, {"phi": 0.0}, "chebycf: phi must be a finite number > 0, got 0.0"),
        (ChebyCF, {"eta": "512"}, "chebycf: eta must be"),
        (ChebyCF, {"beta": -0.4}, "chebycf: beta must be"),
        (ChebyCF, {"alpha": float("inf")}, "chebycf: alpha must be"),
    ],
)
def test_bad_parameters_fail_at_construction_in_one_line(cls, kwargs, match):
    with pytest.raises(RecvaeError, match=match) as info:
        cls(**kwargs)
    assert "\n" not in str(info.value)


def test_a_rank_the_training_matrix_cannot_have_is_one_line_at_fit():
    with pytest.raises(RecvaeError, match=r"chebycf: eta = 40, the ideal pass's rank, exceeds") as info:
        ChebyCF(eta=40).fit(dataset())
    assert "\n" not in str(info.value)


def test_the_registry_creates_each_filter_with_the_authors_gowalla_defaults():
    assert isinstance(model_class("gf-cf")(), GFCF)
    assert create_model("gf-cf", {}).params() == {"operator": "auto", "alpha": 0.3, "k": 256}
    assert create_model("bspm", {}).params() == {
        "operator": "auto", "factor_dim": 448, "idl_beta": 0.2, "blur_time": 1.0, "blur_steps": 1,
        "sharpen_time": 2.5, "sharpen_steps": 1, "solver": "rk4", "early_merge": True,
    }
    assert create_model("chebycf", {}).params() == {
        "operator": "auto", "order": 8, "phi": 1.5, "eta": 512, "alpha": 0.2, "beta": 0.4,
    }
    with pytest.raises(RecvaeError, match="where: unknown parameter 'K' for chebycf"):
        create_model("chebycf", {"K": 8}, where="where")


def test_the_empty_training_matrix_is_refused():
    ds = dataset()
    ds.train = sp.csr_matrix(ds.train.shape, dtype=np.float32)
    with pytest.raises(RecvaeError, match="gf-cf: the training matrix 90x30 is empty"):
        GFCF(k=4).fit(ds)


# ----------------------------------------------------------------- operators and caches
@pytest.mark.parametrize("cls, params", [(GFCF, {"k": 6}), (BSPM, {"factor_dim": 6}), (ChebyCF, {"eta": 6})])
def test_dense_and_sparse_operators_agree(cls, params):
    ds = dataset()
    sparse = cls(operator="sparse", **params).fit(ds)
    dense = cls(operator="dense", **params).fit(ds)
    assert sparse.graph_.dense is None and dense.graph_.dense.shape == (N_ITEMS, N_ITEMS)
    np.testing.assert_allclose(dense.score(ds.test.fold_in), sparse.score(ds.test.fold_in),
                               rtol=1e-4, atol=1e-6)


def test_auto_takes_the_dense_p_only_where_it_is_faster_and_fits(monkeypatch):
    narrow = random_csr(2000, 40, 0.3, 0)  # 40² per user against 2·nnz: dense
    wide = random_csr(50, 5000, 0.002, 0)  # 5000² against ≈ 1000: sparse
    assert dense_is_faster(narrow) and not dense_is_faster(wide)
    assert GFCF(k=4).fit(dataset()).graph_.dense is not None  # 30 items: dense is cheaper
    monkeypatch.setattr(graph_module.memory, "available_bytes", lambda: 1000)
    assert GFCF(k=4).fit(dataset()).graph_.dense is None  # ... but it does not fit
    with pytest.raises(RecvaeError, match=r"gf-cf: needs ≈ .*dense 30 × 30 float32 P.*operator: sparse"):
        GFCF(k=4, operator="dense").fit(dataset())


def test_the_graph_normalizes_by_degrees_and_keys_on_content():
    x = sp.csr_matrix(np.array([[1, 1, 0], [1, 0, 0]], dtype=np.float32))
    g = ItemGraph.of(x)
    expected = np.array([[1 / math.sqrt(2 * 2), 1 / math.sqrt(2 * 1), 0], [1 / math.sqrt(1 * 2), 0, 0]])
    np.testing.assert_allclose(g.normalized.toarray(), expected, rtol=1e-6)
    assert list(g.zero_degree) == [2] and g.degree_power(-0.5)[2, 0] == 0.0
    assert g.key == ItemGraph.of(x.astype(np.float64)).key  # the same R̃
    assert g.key != ItemGraph.of(sp.csr_matrix(np.array([[1, 0, 1], [1, 0, 0]], np.float32))).key


def test_a_search_computes_each_svd_once_per_training_matrix_and_rank(monkeypatch):
    calls = []
    real = graph_module.np.linalg.svd
    monkeypatch.setattr(graph_module.np.linalg, "svd", lambda *a, **k: calls.append(1) or real(*a, **k))
    ds = dataset()
    for alpha in (0.1, 0.2, 0.3):  # three trials at one rank: one SVD
        GFCF(alpha=alpha, k=6).fit(ds)
    assert len(calls) == 1
    ChebyCF(eta=6).fit(ds)  # the same R̃ and rank, another model: still cached
    BSPM(factor_dim=7).fit(ds)  # another rank
    GFCF(k=6).fit(dataset(seed=5))  # another training matrix
    assert len(calls) == 3
    v = GFCF(k=6).fit(ds).ideal_
    assert not v.flags.writeable  # shared between models: nobody may write into it


def uncached(model, fold_in):
    """The model's scores computed without the basis cache."""
    saved, models_module.BASIS_CACHE.max_bytes = models_module.BASIS_CACHE.max_bytes, 0
    try:
        return model.score(fold_in)
    finally:
        models_module.BASIS_CACHE.max_bytes = saved


def test_a_search_over_the_weights_reuses_the_bases_of_each_batch(monkeypatch):
    ds = dataset()
    products = []
    real = ItemGraph.propagate
    monkeypatch.setattr(ItemGraph, "propagate", lambda self, x: products.append(1) or real(self, x))
    first = ChebyCF(order=6, eta=6, phi=1.5, alpha=0.2).fit(ds).score(ds.test.fold_in)
    per_pass = len(products)  # K products with P per scored chunk
    assert per_pass > 0 and per_pass % 6 == 0
    trials = [(3.0, 0.1), (0.8, 0.5), (1.5, 0.2)]
    for phi, alpha in trials:  # only the weights change: no product with P
        model = ChebyCF(order=6, eta=6, phi=phi, alpha=alpha).fit(ds)
        scores = model.score(ds.test.fold_in)
        assert len(products) == per_pass
        np.testing.assert_array_equal(scores, uncached(model, ds.test.fold_in))  # = computed afresh
        del products[per_pass:]
    np.testing.assert_array_equal(scores, first)  # the last trial repeats the first setting
    ChebyCF(order=6, eta=6, beta=0.3).fit(ds).score(ds.test.fold_in)  # β changes the bases
    assert len(products) == 2 * per_pass


def test_the_cache_is_bounded_and_keeps_a_scan_that_does_not_fit():
    cache = ArrayCache(max_bytes=100)
    a, b, c = (np.zeros(10, np.float32) for _ in range(3))  # 40 bytes each
    assert cache.put("a", a, group="scan") and cache.put("b", b, group="scan")
    assert not cache.has_room(40, group="scan") and cache.has_room(40, group="other")
    assert not cache.put("c", c, group="scan")  # would evict its own scan's head: not kept
    assert cache.get("a") is a and cache.get("c") is None and (cache.hits, cache.misses) == (1, 1)
    assert cache.put("c", c, group="other")  # another group evicts the least recently used: b
    assert cache.get("b") is None and cache.get("a") is a and cache.nbytes == 80
    assert not a.flags.writeable
    assert not cache.put("big", np.zeros(30, np.float32))  # larger than the whole cache


def test_the_digest_depends_on_content_only():
    x = random_csr(20, 15, 0.3, 0)
    assert digest_csr(x) == digest_csr(x.tocoo()) == digest_csr(x.astype(np.float32).tocsc())
    y = x.copy()
    y.data[0] = 2.0
    assert digest_csr(y) != digest_csr(x)


def test_search_default_has_a_space_for_each_filter():
    from recvae.search.spaces import DEFAULT_SPACES

    assert {"alpha", "k"} <= set(DEFAULT_SPACES["gf-cf"])
    assert {"sharpen_time", "idl_beta", "factor_dim"} <= set(DEFAULT_SPACES["bspm"])
    assert {"phi", "alpha", "beta", "eta"} <= set(DEFAULT_SPACES["chebycf"])
