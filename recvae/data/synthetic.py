"""Synthetic interaction logs shaped like MovieLens-20M, for speed and memory benchmarks.

Same user / item counts and number of ratings as ML-20M (138,493 users, 26,744 movies,
20,000,263 ratings, every user ≥ 20 ratings), power-law user activity and item popularity,
and a rating distribution where about half the ratings are > 3.5 — so the paper's
preprocessing keeps roughly ML-20M's ~10M positives. Not a substitute for the real data's
structure: use it for timing, never for accuracy.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

ML20M_USERS = 138_493
ML20M_ITEMS = 26_744
ML20M_RATINGS = 20_000_263

# MovieLens' half-star grades and roughly ML-20M's shares of each (≈ 50 % above 3.5).
_GRADES = np.array([0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0])
_SHARES = np.array([0.012, 0.034, 0.014, 0.072, 0.044, 0.214, 0.110, 0.278, 0.077, 0.145])


def make_ml20m_like(
    n_users: int = ML20M_USERS,
    n_items: int = ML20M_ITEMS,
    n_ratings: int = ML20M_RATINGS,
    *,
    min_user_ratings: int = 20,
    seed: int = 0,
) -> pd.DataFrame:
    """A ratings frame (``userId``, ``movieId``, ``rating``, ``timestamp``) with distinct
    (user, item) pairs, sorted by user like MovieLens' ``ratings.csv``.

    The row count is within a few percent of ``n_ratings`` (duplicate draws are dropped).
    """
    rng = np.random.default_rng(seed)
    # User activity: Pareto tail above the minimum, scaled to the requested total, capped at
    # ML-20M's most active user (9,254 ratings).
    raw = rng.pareto(1.3, n_users) + 1.0
    cap = min(9_254, n_items)
    scale = max(n_ratings - min_user_ratings * n_users, 0) / raw.sum()
    for _ in range(20):  # re-scale so that the capped activities still sum to n_ratings
        activity = np.minimum(min_user_ratings + np.floor(raw * scale).astype(np.int64), cap)
        scale *= 1 + (n_ratings - activity.sum()) / max(activity.sum() - min_user_ratings * n_users, 1)
    # Item popularity 1 / (rank + 50): the top item gets ~0.3 % of ratings, as in ML-20M.
    weights = 1.0 / (np.arange(1, n_items + 1) + 50.0)
    weights = weights[rng.permutation(n_items)]
    cdf = np.cumsum(weights / weights.sum())

    # Oversample, drop duplicate pairs, then keep a random `activity[u]` of each user's items.
    draws = np.ceil(activity * 1.4).astype(np.int64)
    u = np.repeat(np.arange(n_users, dtype=np.int64), draws)
    i = np.searchsorted(cdf, rng.random(len(u)), side="right").clip(max=n_items - 1)
    pairs = np.unique(u * n_items + i)
    users = pairs // n_items
    order = np.lexsort((rng.random(len(pairs)), users))  # random order within each user
    starts = np.concatenate([[0], np.cumsum(np.bincount(users, minlength=n_users))[:-1]])
    rank = np.arange(len(order)) - starts[users[order]]
    keep = np.sort(order[rank < activity[users[order]]])
    users, items = users[keep], pairs[keep] % n_items
    ratings = rng.choice(_GRADES, size=len(users), p=_SHARES / _SHARES.sum())
    timestamps = rng.integers(789_652_009, 1_427_784_002, size=len(users))
    return pd.DataFrame(
        {
            "userId": (users + 1).astype(np.int64),
            "movieId": (items + 1).astype(np.int64),
            "rating": ratings,
            "timestamp": timestamps,
        }
    )


def write_ratings_csv(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a frame from :func:`make_ml20m_like` in MovieLens' ``ratings.csv`` format."""
    with open(path, "wb") as f:
        f.write(b"userId,movieId,rating,timestamp\n")
        pacsv.write_csv(
            pa.Table.from_pandas(df, preserve_index=False),
            f,
            write_options=pacsv.WriteOptions(include_header=False, quoting_style="none"),
        )


def write_log_parts(
    folder: str | os.PathLike,
    n_rows: int,
    *,
    n_users: int = 1_000_000,
    n_items: int = 200_000,
    n_parts: int = 32,
    min_user_rows: int = 5,
    seed: int = 0,
) -> int:
    """Write an interaction log as Spark leaves it: ``part-NNNNN-….snappy.parquet`` files, a
    ``_SUCCESS`` marker and ``.crc`` side files; returns the number of rows (``n_rows`` within a
    fraction of a percent).

    Columns ``user_id``, ``item_id`` (int64 ids that are not row numbers), ``rating`` (half-star
    grades, about half > 3.5) and ``ts`` (epoch seconds). Users have power-law activity (at least
    ``min_user_rows``, at most a tenth of the items), items power-law popularity, and no (user,
    item) pair repeats. Generated one part (a block of users) at a time, so memory stays at a
    part's size whatever ``n_rows``. Rows are shuffled within each part.
    """
    import pyarrow.parquet as pq

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    raw = rng.pareto(1.2, n_users) + 1.0
    cap = max(min_user_rows, n_items // 10)
    scale = max(n_rows - min_user_rows * n_users, 0) / raw.sum()
    for _ in range(30):  # re-scale so that the capped activities still sum to n_rows
        activity = np.minimum(min_user_rows + np.floor(raw * scale).astype(np.int64), cap)
        scale *= 1 + (n_rows - activity.sum()) / max(activity.sum() - min_user_rows * n_users, 1)
    weights = 1.0 / (np.arange(1, n_items + 1) + 20.0) ** 0.9
    cdf = np.cumsum(weights[rng.permutation(n_items)])
    cdf /= cdf[-1]
    user_ids = rng.permutation(n_users).astype(np.int64) * 11 + 100_003
    item_ids = rng.permutation(n_items).astype(np.int64) * 7 + 5_000_011
    bounds = np.searchsorted(np.cumsum(activity), np.linspace(0, activity.sum(), n_parts + 1)[1:-1])
    total = 0
    for k, users in enumerate(np.split(np.arange(n_users), bounds)):
        want = activity[users]
        keys = _distinct_draws(users, want, cdf, rng)
        u = keys // n_items
        order = np.lexsort((rng.random(len(keys)), u))  # a random `want` of each user's draws
        have = np.bincount(u - users[0], minlength=len(users))
        starts = np.concatenate([[0], np.cumsum(have)[:-1]])
        rank = np.arange(len(order)) - starts[u[order] - users[0]]
        kept = keys[order[rank < want[u[order] - users[0]]]]
        kept = kept[rng.permutation(len(kept))]
        n = len(kept)
        table = pa.table({
            "user_id": user_ids[kept // n_items],
            "item_id": item_ids[kept % n_items],
            "rating": rng.choice(_GRADES, size=n, p=_SHARES / _SHARES.sum()),
            "ts": rng.integers(1_300_000_000, 1_700_000_000, size=n),
        })
        name = f"part-{k:05d}-5e1c0d2a-7d1b-4b8e-9f0a-{seed:012d}-c000.snappy.parquet"
        pq.write_table(table, out / name, row_group_size=1 << 20, compression="snappy")
        (out / f".{name}.crc").write_bytes(b"crc")
        total += n
    (out / "_SUCCESS").write_bytes(b"")
    return total


def _distinct_draws(
    users: np.ndarray, want: np.ndarray, cdf: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Sorted distinct ``user * n_items + item`` keys, at least ``want[k]`` for ``users[k]``, items
    drawn by popularity; users short of distinct items draw again, more each round."""
    n_items = len(cdf)
    keys = np.zeros(0, dtype=np.int64)
    need, factor = want.copy(), 1.2
    while need.any():
        short = need > 0
        draws = np.repeat(users[short], np.ceil(need[short] * factor).astype(np.int64) + 2)
        items = np.searchsorted(cdf, rng.random(len(draws)), side="right").clip(max=n_items - 1)
        keys = np.sort(np.concatenate([keys, draws * n_items + items]))
        keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]  # (np.unique hashes: slower)
        need = np.maximum(want - np.bincount(keys // n_items - users[0], minlength=len(users)), 0)
        factor *= 2
    return keys
