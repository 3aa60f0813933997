"""Shared helpers for the benchmark scripts: peak memory, machine description, JSON output."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp


def peak_rss_gb() -> float:
    """Peak resident set size of this process so far, in GB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    """Write ``payload`` (plus the machine description) to ``path`` if given."""
    if not path:
        return
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), **payload}, indent=2, default=str) + "\n")
    print(f"wrote {out}")


def print_table(rows: list[dict[str, Any]]) -> None:
    """A fixed-width table of dict rows (same keys)."""
    if not rows:
        return
    keys = list(rows[0])
    cells = [[f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    print("  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True)))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)))


def power_law_rows(n_users: int, n_items: int, nnz: int, rng: np.random.Generator) -> sp.csr_matrix:
    """Binary CSR with ~``nnz`` entries: Pareto user activity (≥ 5), Zipf item popularity."""
    weights = 1.0 / np.arange(1, n_items + 1) ** 1.05
    cdf = np.cumsum(weights[rng.permutation(n_items)])
    cdf /= cdf[-1]
    activity = rng.pareto(1.3, n_users) + 1.0
    draws = nnz
    for _ in range(4):  # popular items repeat within a user: draw more until ~nnz remain
        lengths = 5 + np.floor(activity / activity.sum() * max(draws - 5 * n_users, 0)).astype(
            np.int64
        )
        lengths = np.minimum(lengths, n_items)
        users = np.repeat(np.arange(n_users, dtype=np.int64), lengths)
        items = np.searchsorted(cdf, rng.random(len(users)), side="right").clip(max=n_items - 1)
        keys = np.unique(users * n_items + items)
        if len(keys) >= 0.995 * nnz:
            break
        draws = int(draws * nnz / len(keys))
    return sp.csr_matrix(
        (np.ones(len(keys), np.float32), (keys // n_items, keys % n_items)),
        shape=(n_users, n_items),
    )


def synthetic_dataset(
    n_train: int, n_heldout: int, n_items: int, nnz_per_user: float, seed: int = 0,
    name: str = "synthetic power-law",
) -> Any:
    """A strong-generalization Dataset of :func:`power_law_rows`: ``n_train`` training users,
    then ``n_heldout`` validation and ``n_heldout`` test users with 20 % of their items held out.

    Memory: the generator holds a few int64 arrays of the interaction count (≈ 1.5 GB at 20M);
    run it in its own process where the peak memory of training is measured.
    """
    from recvae.data.dataset import Dataset, Part

    rng = np.random.default_rng(seed)
    n_users = n_train + 2 * n_heldout
    rows = power_law_rows(n_users, n_items, int(nnz_per_user * n_users), rng)
    coo = rows[n_train:].tocoo()
    held = rng.random(coo.nnz) < 0.2

    def part(lo: int, hi: int) -> Part:
        keep = (coo.row >= lo) & (coo.row < hi)

        def csr(mask: np.ndarray) -> sp.csr_matrix:
            return sp.csr_matrix(
                (coo.data[mask], (coo.row[mask] - lo, coo.col[mask])), shape=(hi - lo, n_items)
            )

        return Part(csr(keep & ~held), csr(keep & held), np.arange(lo, hi))

    return Dataset(
        train=rows[:n_train],
        train_users=np.arange(n_train),
        validation=part(0, n_heldout),
        test=part(n_heldout, 2 * n_heldout),
        user_ids=np.arange(n_users),
        item_ids=np.arange(n_items),
        manifest={"source": name},
    )
