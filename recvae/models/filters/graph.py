"""The item graph every filter of this family shares: R̃, P = R̃ᵀR̃, and the ideal low-pass basis.

    R̃ = D_u^{-1/2} R D_i^{-1/2}      (R: training users × items; D_u, D_i: its row and column sums)
    P = R̃ᵀR̃                         (item × item, eigenvalues in [0, 1])
    V = top-k right singular vectors of R̃ (n_items × k): the "ideal" low-pass filter V Vᵀ

Signals are *item-major*: a batch of b users' histories is held as an (n_items, b) array, the
transpose of the (b, n_items) fold-in rows. P x is then two products of a CSR matrix with a
row-major dense matrix, R̃ᵀ(R̃ x), each of which walks a sparse row and adds whole contiguous
rows of x (measured 2× faster on Gowalla than the user-major x R̃ᵀ R̃, whose dense-times-sparse
products scatter). Each costs nnz(R̃) × b multiply-adds; the dense n_items² P costs n_items² × b
and is used only where it is faster and fits in memory (:func:`dense_is_faster`).

An item without training interactions has degree 0: its weights 1/sqrt(0) and sqrt(0) are set
to 0 (never inf, so never NaN), and it scores 0.

The SVD is the expensive part of a fit (Gowalla, k = 512: minutes); :func:`ideal_basis` keeps
the last few in :data:`SVD_CACHE`, keyed by the digest of R̃ and k, so that the trials of a
search on one training matrix compute each rank once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from recvae.errors import RecvaeError
from recvae.models import memory
from recvae.models.filters.cache import ArrayCache, digest_csr

OPERATORS = ("auto", "sparse", "dense")
#: How many times more multiply-adds per second a float32 dense product (BLAS sgemm) does than
#: scipy's CSR × dense product, on this 2-core machine: 22–38 on five synthetic catalogues of
#: 2,000–10,000 items (``benchmarks/filters.py calibrate``, results/filters_calibration.json);
#: 20 errs towards the sparse path, which needs no n_items² memory. The dense P is chosen when
#: n_items² multiply-adds per user take less time than the sparse path's 2·nnz(R̃)
#: (:func:`dense_is_faster`): never on Gowalla (41k items, 0.8M interactions).
DENSE_SPEEDUP = 20.0
#: Entries of R̃ up to which the SVD is LAPACK's dense one (exact, any k ≤ min(shape)) rather than
#: ARPACK's (iterative, needs k < min(shape)): tiny matrices and tests.
DENSE_SVD_ENTRIES = 1 << 22
#: SVDs kept for reuse: V of Gowalla at k = 512 is 84 MB in float32.
SVD_CACHE = ArrayCache(max_bytes=1 << 30)


@dataclass
class ItemGraph:
    """R̃ (``normalized``, CSR float32 of shape (n_users, n_items)) and the item degrees of the
    training matrix it came from (``item_degree``, (n_items,) float64 column sums of R).

    ``dense`` holds P = R̃ᵀR̃ as an (n_items, n_items) float32 array once :meth:`densify` chose it.
    ``key`` is the SHA-256 of R̃'s content: caches of work derived from R̃ are keyed by it.

    Example::

        graph = ItemGraph.of(dataset.train)
        px = graph.propagate(fold_in[:100].T.tocsr())   # P x: (n_items, 100)
    """

    normalized: sp.csr_matrix
    item_degree: np.ndarray
    dense: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def of(cls, train: sp.csr_matrix) -> ItemGraph:
        """The graph of a training matrix R (n_users, n_items), degrees taken from its rows."""
        r = train.tocsr().astype(np.float64)
        user_degree = np.asarray(r.sum(axis=1)).ravel()
        item_degree = np.asarray(r.sum(axis=0)).ravel()
        normalized = sp.diags(inverse_sqrt(user_degree)) @ r @ sp.diags(inverse_sqrt(item_degree))
        normalized = normalized.tocsr().astype(np.float32)
        normalized.sort_indices()
        return cls(normalized=normalized, item_degree=item_degree)

    @property
    def n_items(self) -> int:
        return self.normalized.shape[1]

    @cached_property
    def key(self) -> str:
        return digest_csr(self.normalized)

    @cached_property
    def transposed(self) -> sp.csr_matrix:
        """R̃ᵀ as CSR (n_items, n_users), the second factor of P x = R̃ᵀ(R̃ x)."""
        return self.normalized.T.tocsr()

    @cached_property
    def zero_degree(self) -> np.ndarray:
        """Indices of the items without training interactions."""
        return np.flatnonzero(self.item_degree == 0)

    def degree_power(self, power: float) -> np.ndarray:
        """D_i^power as an (n_items, 1) float32 column, 0 for items of degree 0 (any power)."""
        d = self.item_degree
        out = np.zeros_like(d)
        np.power(d, power, out=out, where=d > 0)
        return out.astype(np.float32)[:, None]

    def propagate(self, x: np.ndarray | sp.spmatrix) -> np.ndarray:
        """P x for an item-major signal x (n_items, b), dense or sparse: a dense (n_items, b) float32."""
        if self.dense is not None:
            # P is symmetric: (xᵀP)ᵀ = P x also for a sparse x, without densifying it
            out = self.dense @ x if isinstance(x, np.ndarray) else (x.T @ self.dense).T
            return np.ascontiguousarray(out, dtype=np.float32)
        z = self.normalized @ x
        if sp.issparse(z):  # a sparse history: the first product stays sparse, the second is dense
            z = z.toarray()
        return np.asarray(self.transposed @ z, dtype=np.float32)

    def densify(self, operator: str, model: str) -> None:
        """Hold P as a dense matrix when ``operator`` is ``dense``, or ``auto`` and it is both faster
        (:func:`dense_is_faster`) and fits in the memory available; ``dense`` that cannot fit is a
        one-line RecvaeError."""
        from recvae.models.ease import fit_memory_bytes, gram

        self.dense = None
        if operator == "sparse" or (operator == "auto" and not dense_is_faster(self.normalized)):
            return
        need = fit_memory_bytes(self.normalized, np.dtype(np.float32))
        if operator == "auto":
            available = memory.available_bytes()
            if available is not None and need > available:
                return
        else:
            n = self.n_items
            memory.check_fits(
                model, need, f"the dense {n:,} × {n:,} float32 P = R̃ᵀR̃", "set operator: sparse"
            )
        self.dense = gram(self.normalized, np.dtype(np.float32))


def dense_is_faster(normalized: sp.csr_matrix) -> bool:
    """Whether P x costs less time through the dense P (n_items² multiply-adds per user, at
    DENSE_SPEEDUP times the rate) than through R̃ᵀ(R̃ x) (2·nnz(R̃) per user)."""
    n = normalized.shape[1]
    return n * n < DENSE_SPEEDUP * 2 * normalized.nnz


def inverse_sqrt(degree: np.ndarray) -> np.ndarray:
    """1/sqrt(d), with 0 (not inf) where d = 0."""
    out = np.zeros_like(degree, dtype=np.float64)
    np.divide(1.0, np.sqrt(degree), out=out, where=degree > 0)
    return out


def ideal_basis(graph: ItemGraph, k: int, model: str, param: str = "k") -> np.ndarray:
    """V: the top-``k`` right singular vectors of R̃ as an (n_items, k) float32 array (read-only,
    shared through :data:`SVD_CACHE`; their order and signs are irrelevant to V Vᵀ).

    ARPACK (``scipy.sparse.linalg.svds``, the authors' call in ChebyCF; GF-CF and BSPM use
    SVDLIBC's ``sparsesvd``, which computes the same vectors), started from a fixed vector so
    that two fits give the same V; LAPACK's dense SVD for tiny matrices. ARPACK runs in float32,
    where the authors' runs in float64: on Gowalla (k = 256 and 512) the two subspaces agree to
    cosines ≥ 0.999998 and float32 takes half the time (k = 512: 64 against 132 CPU-s).
    """
    n_users, n_items = graph.normalized.shape
    dense = n_users * n_items <= DENSE_SVD_ENTRIES
    limit = min(n_users, n_items) - (0 if dense else 1)
    if k > limit:
        raise RecvaeError(
            f"{model}: {param} = {k}, the ideal pass's rank, exceeds what the {n_users} × {n_items} "
            f"training matrix allows ({limit}); set {param} ≤ {limit}"
        )
    key = ("svd", graph.key, k)
    cached = SVD_CACHE.get(key)
    if cached is not None:
        return cached
    if dense:
        _, _, vt = np.linalg.svd(graph.normalized.toarray().astype(np.float64), full_matrices=False)
        vt = vt[:k]
    else:
        # a fixed start vector (ARPACK's default is random), sized like the smaller Gram matrix
        start = np.random.default_rng(0).uniform(-1.0, 1.0, min(n_users, n_items))
        _, _, vt = svds(graph.normalized, k=k, v0=start.astype(np.float32))
    v = np.ascontiguousarray(vt.T, dtype=np.float32)
    SVD_CACHE.put(key, v, group="svd")
    v.flags.writeable = False  # also when too large to cache: V is shared state, never written
    return v
