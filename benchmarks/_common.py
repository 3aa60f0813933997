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
