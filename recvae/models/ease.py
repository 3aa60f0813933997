"""EASE (Steck 2019) and EDLAE (Steck 2020): closed-form item-item linear autoencoders with a
zero diagonal, one solve for both.

    G = XᵀX,   Λ = diag(λ + p/(1−p)·G_ii),   P = (G + Λ)⁻¹,
    B = I − P·diag(1/diag(P))   (so diag(B) = 0),   scores = X_u · B

EASE is p = 0 (Λ = λI); EDLAE's dropout p adds an item-wise penalty that grows with the item's
popularity. Both fit through the same function, :func:`ease_weights`.

Memory is the whole story at scale: one dense n_items × n_items matrix is n_items² × 8 bytes in
float64 (ML-20M, 20,108 items: 3.2 GB; Gowalla, 40,981 items: 13.4 GB), half that in float32.
The fit holds exactly one such matrix: the Gram matrix is written block by block into it,
Cholesky-inverted in place by LAPACK (``potrf``/``potri`` through torch), turned into B in
place, and (float64) compacted in place into the float32 B kept for scoring. Peak ≈
n_items² × 8 bytes (float64) or × 4 bytes (float32), plus block-sized temporaries and copies
of the sparse X (:func:`fit_memory_bytes` counts them). A fit that cannot fit in the
memory available is refused before anything is allocated.
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
import torch

from recvae.data.dataset import Dataset
from recvae.errors import RecvaeError
from recvae.io import save_npy
from recvae.models import memory
from recvae.models.base import (
    Callback,
    Recommender,
    load_state_array,
    report_fit_seconds,
    training_matrix,
)
from recvae.models.params import check_choice, check_real

DTYPES = ("float64", "float32")
BLOCK = 2048  # rows per block of the Gram product and of the in-place passes
# Entries per temporary: a Gram block's sparse product (≈ 50 MB at 12 bytes an entry, whatever
# the density: a dense ML-20M-shaped Gram would otherwise need 2048 × 20,108 of them) and a
# chunk of the float64 → float32 compaction (32 MB).
CHUNK = 1 << 22


@dataclass(eq=False)
class EASE(Recommender):
    """Embarrassingly Shallow Autoencoder: an item-item weight matrix B, fitted in closed form.

    ``l2`` is λ, the ridge on B (Steck: ≈ 500 on ML-20M; tune on validation NDCG@100).
    ``dtype`` is the precision of the solve: ``float64`` (default, needs n_items² × 8 bytes of
    RAM) or ``float32`` (n_items² × 4 bytes, slightly less accurate). ``B_`` is always stored as
    float32 of shape (n_items, n_items); scores are ``fold_in @ B_``.

    Example::

        model = EASE(l2=500.0).fit(dataset)
        scores = model.score(dataset.test.fold_in[:100])   # (100, n_items) float32
    """

    name: ClassVar[str] = "ease"
    l2: float = 500.0
    dtype: str = "float64"
    B_: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_real(self, "l2", low=0.0)
        check_choice(self, "dtype", DTYPES)

    @property
    def _dropout(self) -> float:
        """The dropout rate p of the penalty Λ = diag(λ + p/(1−p)·G_ii): none in EASE."""
        return 0.0

    def fit(
        self,
        dataset: Dataset,
        *,
        callbacks: Sequence[Callback] = (),
        show_progress: bool = False,
        checkpoint_dir: str | os.PathLike | None = None,
        resume: bool = False,
    ) -> EASE:
        """Solve for B on ``dataset.train``; reports ``fit_seconds`` once (epoch 0) to callbacks.

        Refuses at once (a RecvaeError) when the solve would need more memory than is available.
        """
        start = time.perf_counter()
        train = training_matrix(dataset, self.name)
        self.B_ = None  # a refit must not hold the old n_items² matrix alongside the new one
        dtype = np.dtype(self.dtype)
        check_fit_memory(self.name, train, dtype)
        self.B_ = ease_weights(train, self.l2, dtype, dropout=self._dropout, model=self.name)
        self.item_ids_ = dataset.item_ids
        report_fit_seconds(callbacks, start)
        return self

    def _score(self, fold_in: sp.csr_matrix) -> np.ndarray:
        assert self.B_ is not None
        # sparse @ dense: costs nnz(fold_in) × n_items, never densifies the histories
        return np.asarray(fold_in.astype(np.float32) @ self.B_)

    def _save_state(self, path: Path) -> None:
        assert self.B_ is not None
        save_npy(path / "B.npy", self.B_)

    def _load_state(self, path: Path) -> None:
        self.B_ = load_state_array(path / "B.npy", self.name, (self.n_items, self.n_items))


@dataclass(eq=False)
class EDLAE(EASE):
    """Emphasized Denoising Linear Autoencoder, full rank (Steck, NeurIPS 2020, "Autoencoders
    that don't overfit towards the identity"): EASE with a dropout-emphasized, item-wise ridge.

    Training a full-rank linear autoencoder on inputs with dropout rate p (kept entries scaled
    by 1/(1−p)) is, in expectation, ridge regression with the penalty Λ = diag(p/(1−p)·G_ii),
    G = XᵀX: popular items are shrunk more. Emphasizing the dropped-out entries in the loss
    removes the trivial identity solution, which the closed form imposes as EASE's zero
    diagonal. With ``l2`` (λ) on top: Λ = diag(λ + p/(1−p)·G_ii), B = I − P·diag(1/diag P),
    P = (G + Λ)⁻¹. ``dropout`` = 0 is EASE exactly.

    The defaults are the paper's Million Song Dataset setting, p = 0.25 and λ = 70 (test
    Recall@20/50, NDCG@100 0.334 / 0.429 / 0.392 there); tune both on validation NDCG@100.
    ``dtype`` and the memory needed (n_items² × 8 or × 4 bytes) are as in :class:`EASE`.

    Example::

        model = EDLAE(l2=70.0, dropout=0.25, dtype="float32").fit(dataset)
        scores = model.score(dataset.test.fold_in[:100])   # (100, n_items) float32
    """

    name: ClassVar[str] = "edlae"
    l2: float = 70.0
    dropout: float = 0.25

    def __post_init__(self) -> None:
        super().__post_init__()
        check_real(self, "dropout", low=0.0, high=1.0, high_open=True)

    @property
    def _dropout(self) -> float:
        return self.dropout


def ease_weights(
    x: sp.csr_matrix, l2: float, dtype: np.dtype, *, dropout: float = 0.0, model: str = "ease"
) -> np.ndarray:
    """B (n_items, n_items) float32 for the CSR user-item matrix ``x``, solved in ``dtype``, with
    the ridge diag(λ + p/(1−p)·G_ii) (EASE: ``dropout`` p = 0; EDLAE: p > 0).

    Holds one dense n_items² matrix of ``dtype`` throughout (see the module docstring).
    """
    a = gram(x, dtype)
    # p = 0 adds exactly λ (0·G_ii = 0), so EASE is EDLAE's p = 0 bit for bit
    a[np.diag_indices_from(a)] += l2 + dropout / (1.0 - dropout) * a.diagonal()
    ridge = f"l2={l2}" + (f", dropout={dropout}" if dropout else "")
    invert_spd_lower(a, f"{model}: XᵀX + diag(λ + p/(1−p)·G_ii) ({ridge})")
    weights_from_inverse(a)
    if a.dtype == np.float32:
        return a
    n = a.shape[0]
    _compact_to_float32(a)
    # give back the float64 tail: realloc shrinks in place (needs `a` to be the only reference)
    a.resize(((n * n + 1) // 2,), refcheck=True)
    return a.view(np.float32)[: n * n].reshape(n, n)


def check_fit_memory(model: str, x: sp.csr_matrix, dtype: np.dtype) -> None:
    """Refuse (one-line RecvaeError) a fit of ``x`` that would not fit in the memory available."""
    n = x.shape[1]
    need = fit_memory_bytes(x, dtype)
    hint = (
        "use an autoencoder instead (model: mult-vae, which holds n_items × 600 weights; "
        "softmax: sampled for very large catalogues)"
    )
    if np.dtype(dtype) == np.float64:
        hint = f"set dtype: float32 (≈ {memory.format_bytes(fit_memory_bytes(x, np.float32))}) or {hint}"
    memory.check_fits(model, need, f"a dense {n:,} × {n:,} {np.dtype(dtype).name} matrix", hint)


def fit_memory_bytes(x: sp.csr_matrix, dtype: np.dtype) -> int:
    """Peak bytes :func:`ease_weights` allocates for ``x`` in ``dtype`` (on top of ``x`` itself).

    The n_items² matrix plus, summed because the allocator may keep one phase's freed
    temporaries resident into the next: the Gram phase's copies of X (its transpose, and X
    itself unless already in ``dtype``) and its largest block (rows of Xᵀ and their sparse
    product, bounded by :func:`gram_blocks`); LAPACK's workspace for the inversion; the larger
    of the weights phase's two block² squares and a float64 → float32 compaction chunk.
    ``benchmarks/ease_memory.py`` checks this against the measured peak RSS.
    """
    n_users, n = x.shape
    item = np.dtype(dtype).itemsize
    index = x.indices.dtype.itemsize
    entry = item + index
    copies = (1 + (x.dtype != dtype)) * x.nnz * entry + (n_users + n + 2) * index
    users_of_item = np.bincount(x.indices, minlength=n)
    bound = _row_entry_bound(x)
    block = max(
        (hi - lo + 1) * index + int(users_of_item[lo:hi].sum() + bound[lo:hi].sum()) * entry
        for lo, hi in gram_blocks(x, bound)
    )
    # MKL's potrf/potri through torch, measured: 30-50 MB at n = 2,000-8,000 (1-2 threads)
    lapack = 32 * 2**20 + 512 * n * item
    weights = 2 * min(BLOCK, n) ** 2 * item
    compact = min(CHUNK, n * n) * 8 if item == 8 else 0
    # + the diagonal's copies and scipy's per-row accumulators, n floats each
    return n * n * item + copies + block + lapack + max(weights, compact) + 4 * n * 8


def gram_blocks(x: sp.csr_matrix, bound: np.ndarray | None = None) -> list[tuple[int, int]]:
    """Row ranges (lo, hi) of XᵀX covering all items, each of at most BLOCK rows and at most
    CHUNK entries in its sparse product (a single row may hold up to n_items)."""
    bound = _row_entry_bound(x) if bound is None else bound
    cum = np.concatenate([[0], np.cumsum(bound)])
    n, out, lo = x.shape[1], [], 0
    while lo < n:
        hi = int(np.searchsorted(cum, cum[lo] + CHUNK, side="right")) - 1
        hi = min(max(hi, lo + 1), lo + BLOCK, n)
        out.append((lo, hi))
        lo = hi
    return out


def _row_entry_bound(x: sp.csr_matrix) -> np.ndarray:
    """Per item i, an upper bound on the entries of row i of XᵀX: its multiply-adds (Σ over i's
    users u of |x_u|), and at most n_items. Computed in chunks of rows (exact in float64), so
    that the check stays small."""
    lengths = np.diff(x.indptr)
    out = np.zeros(x.shape[1])
    starts = np.searchsorted(x.indptr, np.arange(0, x.nnz, CHUNK), side="right") - 1
    bounds = np.unique(np.r_[starts, x.shape[0]])
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        rows = lengths[lo:hi]
        out += np.bincount(
            x.indices[x.indptr[lo] : x.indptr[hi]],
            weights=np.repeat(rows.astype(np.float64), rows),
            minlength=x.shape[1],
        )
    return np.minimum(out, x.shape[1]).astype(np.int64)


def _blocks(n: int) -> list[tuple[int, int]]:
    """Consecutive (lo, hi) ranges of at most BLOCK rows covering range(n)."""
    return [(lo, min(lo + BLOCK, n)) for lo in range(0, n, BLOCK)]


def gram(x: sp.csr_matrix, dtype: np.dtype) -> np.ndarray:
    """Dense XᵀX (n_items, n_items), C-ordered, from the sparse X one block of rows at a time."""
    blocks = gram_blocks(x)
    x = x.astype(dtype, copy=False)
    xt = x.T.tocsr()
    n = x.shape[1]
    out = np.zeros((n, n), dtype=dtype)  # csr toarray(out=) accumulates: start from zeros
    for lo, hi in blocks:
        (xt[lo:hi] @ x).toarray(out=out[lo:hi])
    return out


def invert_spd_lower(a: np.ndarray, what: str = "the matrix") -> None:
    """Overwrite the symmetric positive definite C-ordered ``a`` with ``a⁻¹``, in place.

    ``what`` names ``a`` in the error raised when it is not positive definite.

    LAPACK (``potrf`` then ``potri``, MKL through torch) is column-major: ``a.mT`` is the same
    buffer seen in column-major order and, ``a`` being symmetric, the same matrix, so both steps
    run on ``a``'s own memory with ``out=`` and no copy. scipy's bundled OpenBLAS (32-bit LAPACK
    build) is not used: its ``spotrf`` crashed the process (SIGSEGV) on Gowalla's 40,981 items.
    """
    t = torch.from_numpy(a).mT
    info = torch.zeros((), dtype=torch.int32)
    torch.linalg.cholesky_ex(t, out=(t, info))
    if int(info) > 0:
        raise RecvaeError(
            f"{what} is not positive definite; items without interactions need l2 > 0"
        )
    torch.cholesky_inverse(t, out=t)
    if t.data_ptr() != a.ctypes.data:  # torch wrote elsewhere: ``a`` would not hold the inverse
        raise RuntimeError("the in-place Cholesky inverse did not write into its input")


def weights_from_inverse(a: np.ndarray) -> None:
    """Turn P (valid in the lower triangle of ``a``) into B = −P·diag(1/diag P), diag 0, in place.

    Works on block pairs (I ≥ J): the valid block P[I, J] is read once and written to both B[I, J]
    = −P[I, J] / d[J] and B[J, I] = −P[I, J]ᵀ / d[I], so only block-sized temporaries exist.
    """
    n = a.shape[0]
    d = a.diagonal().copy()
    blocks = _blocks(n)
    for bi, (i0, i1) in enumerate(blocks):
        for j0, j1 in blocks[:bi]:
            p = a[i0:i1, j0:j1].copy()
            np.divide(p, -d[j0:j1], out=a[i0:i1, j0:j1])
            np.divide(p.T, -d[i0:i1], out=a[j0:j1, i0:i1])
        p = np.tril(a[i0:i1, i0:i1])
        p += np.tril(p, -1).T
        np.divide(p, -d[i0:i1], out=a[i0:i1, i0:i1])
        np.fill_diagonal(a[i0:i1, i0:i1], 0.0)


def _compact_to_float32(a: np.ndarray) -> None:
    """Write the square float64 ``a`` as float32 into the first half of its own buffer.

    Chunk [lo, hi) of the float32 values lands on bytes that held float64 values < hi / 2 ≤ hi,
    which are converted already or in this chunk, so a forward pass is safe (numpy copies a
    chunk that overlaps its destination). The caller then shrinks the buffer, so the float64
    and float32 matrices never coexist.
    """
    flat64 = a.reshape(-1)
    flat32 = flat64.view(np.float32)
    for lo in range(0, flat64.size, CHUNK):
        hi = min(lo + CHUNK, flat64.size)
        flat32[lo:hi] = flat64[lo:hi]
