"""Synthetic interaction logs shaped like MovieLens-20M, for speed and memory benchmarks.

Same user / item counts and number of ratings as ML-20M (138,493 users, 26,744 movies,
20,000,263 ratings, every user ≥ 20 ratings), power-law user activity and item popularity,
and a rating distribution where about half the ratings are > 3.5 — so the paper's
preprocessing keeps roughly ML-20M's ~10M positives. Not a substitute for the real data's
structure: use it for timing, never for accuracy.
"""

from __future__ import annotations

import os

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
