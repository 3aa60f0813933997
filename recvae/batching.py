"""Row batching over CSR matrices, shared by training, evaluation and top-k export."""

from __future__ import annotations

from collections.abc import Iterator


def row_batches(n_rows: int, batch_size: int) -> Iterator[slice]:
    """Yield consecutive row slices of at most ``batch_size`` rows covering ``range(n_rows)``."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    for start in range(0, n_rows, batch_size):
        yield slice(start, min(start + batch_size, n_rows))

