"""Row batching over CSR matrices, shared by training, evaluation and top-k export."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
import torch


def row_batches(n_rows: int, batch_size: int) -> Iterator[slice]:
    """Yield consecutive row slices of at most ``batch_size`` rows covering ``range(n_rows)``."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    for start in range(0, n_rows, batch_size):
        yield slice(start, min(start + batch_size, n_rows))


def csr_to_torch_dense(rows: sp.csr_matrix, device: torch.device | str = "cpu") -> torch.Tensor:
    """Densify a (small) batch of CSR rows into a float32 tensor on ``device``.

    Only ever called on one batch: the whole user-item matrix is never densified.
    """
    rows = rows.tocsr()
    out = torch.zeros(rows.shape, dtype=torch.float32, device=device)
    if rows.nnz:
        r = np.repeat(np.arange(rows.shape[0]), np.diff(rows.indptr))
        out[torch.as_tensor(r, device=device), torch.as_tensor(rows.indices, device=device)] = (
            torch.as_tensor(rows.data, dtype=torch.float32, device=device)
        )
    return out
