"""Small sparse matrices shared by the tests."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def random_csr(n_rows: int, n_items: int, density: float, seed: int) -> sp.csr_matrix:
    """Binary float32 CSR with about ``density`` of its entries set, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    m = sp.random(n_rows, n_items, density=density, format="csr", random_state=rng, dtype=np.float32)
    m.data[:] = 1.0
    return m


def rows_csr(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    """Binary float32 CSR whose row r holds the items ``rows[r]``."""
    r = [u for u, items in enumerate(rows) for _ in items]
    c = [i for items in rows for i in items]
    return sp.csr_matrix((np.ones(len(c), np.float32), (r, c)), shape=(len(rows), n_items))
