"""EASE (Steck 2019): a closed-form item-item linear autoencoder with a zero diagonal.

    P = (XᵀX + λI)⁻¹,   B = I − P·diag(1/diag(P))   (so diag(B) = 0),   scores = X_u · B

Memory is the whole story at scale: one dense n_items × n_items matrix is n_items² × 8 bytes in
float64 (ML-20M, 20,108 items: 3.2 GB; Gowalla, 40,981 items: 13.4 GB), half that in float32.
The fit holds exactly one such matrix: the Gram matrix is written block by block into it,
Cholesky-inverted in place by LAPACK (``potrf``/``potri`` through torch), turned into B in
place, and (float64) compacted in place into the float32 B kept for scoring. Peak ≈
n_items² × 8 bytes (float64) or × 4 bytes (float32), plus block-sized temporaries.
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


@dataclass
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

    def fit(
        self,
        dataset: Dataset,
        *,
        callbacks: Sequence[Callback] = (),
        show_progress: bool = False,
        checkpoint_dir: str | os.PathLike | None = None,
        resume: bool = False,
    ) -> EASE:
        """Solve for B on ``dataset.train``; reports ``fit_seconds`` once (epoch 0) to callbacks."""
        start = time.perf_counter()
        train = training_matrix(dataset, self.name)
        self.B_ = None  # a refit must not hold the old n_items² matrix alongside the new one
        self.B_ = ease_weights(train, self.l2, np.dtype(self.dtype))
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


def ease_weights(x: sp.csr_matrix, l2: float, dtype: np.dtype) -> np.ndarray:
    """B (n_items, n_items) float32 for the CSR user-item matrix ``x``, solved in ``dtype``.

    Holds one dense n_items² matrix of ``dtype`` throughout (see the module docstring).
    """
    a = gram(x, dtype)
    a[np.diag_indices_from(a)] += l2
    invert_spd_lower(a, l2)
    weights_from_inverse(a)
    if a.dtype == np.float32:
        return a
    n = a.shape[0]
    _compact_to_float32(a)
    # give back the float64 tail: realloc shrinks in place (needs `a` to be the only reference)
    a.resize(((n * n + 1) // 2,), refcheck=True)
    return a.view(np.float32)[: n * n].reshape(n, n)


def gram(x: sp.csr_matrix, dtype: np.dtype) -> np.ndarray:
    """Dense XᵀX (n_items, n_items), C-ordered, from the sparse X one block of rows at a time."""
    x = x.astype(dtype)
    xt = x.T.tocsr()
    n = x.shape[1]
    out = np.zeros((n, n), dtype=dtype)  # csr toarray(out=) accumulates: start from zeros
    for lo in range(0, n, BLOCK):
        hi = min(lo + BLOCK, n)
        (xt[lo:hi] @ x).toarray(out=out[lo:hi])
    return out


def invert_spd_lower(a: np.ndarray, l2: float) -> None:
    """Overwrite the symmetric positive definite C-ordered ``a`` with ``a⁻¹``, in place.

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
            f"ease: XᵀX + l2·I is not positive definite (l2={l2}); items without interactions "
            "need l2 > 0"
        )
    torch.cholesky_inverse(t, out=t)
    if t.data_ptr() != a.ctypes.data:  # torch wrote elsewhere: ``a`` would not hold the inverse
        raise RuntimeError("ease: the in-place Cholesky inverse did not write into its input")


def weights_from_inverse(a: np.ndarray) -> None:
    """Turn P (valid in the lower triangle of ``a``) into B = −P·diag(1/diag P), diag 0, in place.

    Works on block pairs (I ≥ J): the valid block P[I, J] is read once and written to both B[I, J]
    = −P[I, J] / d[J] and B[J, I] = −P[I, J]ᵀ / d[I], so only block-sized temporaries exist.
    """
    n = a.shape[0]
    d = a.diagonal().copy()
    blocks = [(lo, min(lo + BLOCK, n)) for lo in range(0, n, BLOCK)]
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

    Row block k of the float32 matrix lands on bytes that held float64 rows ≤ k, which are already
    converted, so a forward pass is safe (numpy buffers the overlapping first blocks). The caller
    then shrinks the buffer, so the float64 and float32 matrices never coexist.
    """
    n = a.shape[0]
    flat64 = a.reshape(-1)
    flat32 = flat64.view(np.float32)
    for lo in range(0, n, BLOCK):
        hi = min(lo + BLOCK, n)
        flat32[lo * n : hi * n] = flat64[lo * n : hi * n]
