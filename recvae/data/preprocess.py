"""Preprocessing as in Liang et al.: binarize, drop duplicates, min-count filters.

The three steps mirror the reference notebook's named functions so a reader can check them
against the paper's text. Input and output are tidy frames with columns ``user``, ``item``,
``value`` (and optionally ``timestamp`` and ``part``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recvae.errors import RecvaeError


def binarize(df: pd.DataFrame, threshold: float | None) -> pd.DataFrame:
    """Keep interactions with ``value > threshold`` as positives of value 1.

    ``threshold=None`` keeps every interaction (e.g. MSD play counts, implicit logs).
    """
    if threshold is not None:
        df = df[df["value"].to_numpy() > threshold]
    return df.assign(value=1.0)


def _codes(col: pd.Series) -> np.ndarray:
    return pd.factorize(col)[0]


def drop_duplicates(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (user, item[, part]); with timestamps the most recent interaction is kept."""
    # Integer pair keys hash much faster than pandas' multi-column duplicated() at 10M+ rows.
    users, items = _codes(df["user"]), _codes(df["item"])
    key = users.astype(np.int64) * (int(items.max(initial=0)) + 1) + items
    if "part" in df.columns:
        key = key * 2 + (df["part"].to_numpy() == "test")
    dup = pd.Series(key).duplicated(keep=False).to_numpy()
    if not dup.any():
        return df
    if "timestamp" in df.columns:
        order = np.argsort(df["timestamp"].to_numpy(), kind="stable")
        keep = np.zeros(len(df), dtype=bool)
        keep[order] = ~pd.Series(key[order]).duplicated(keep="last").to_numpy()
    else:
        keep = ~pd.Series(key).duplicated(keep="first").to_numpy()
    return df[keep]


def filter_min_counts(
    df: pd.DataFrame, min_item_users: int = 0, min_user_items: int = 5, *, iterate: bool = False
) -> pd.DataFrame:
    """Drop items with fewer than ``min_item_users`` users, then users with fewer than
    ``min_user_items`` items, in one pass (the paper's order); ``iterate=True`` repeats until
    both hold (k-core).
    """
    if min_item_users < 0 or min_user_items < 0:
        raise RecvaeError(
            f"min counts must be ≥ 0, got min_item_users={min_item_users}, "
            f"min_user_items={min_user_items}"
        )
    while True:
        n_before = len(df)
        if min_item_users > 0:
            codes = _codes(df["item"])
            df = df[np.bincount(codes)[codes] >= min_item_users]
        if min_user_items > 0:
            codes = _codes(df["user"])
            df = df[np.bincount(codes)[codes] >= min_user_items]
        if not iterate or len(df) == n_before:
            return df


def preprocess(
    df: pd.DataFrame,
    *,
    threshold: float | None = 3.5,
    min_item_users: int = 0,
    min_user_items: int = 5,
    iterate: bool = False,
    source: str = "the input",
) -> pd.DataFrame:
    """Binarize → drop duplicates → min-count filters; raises if nothing is left."""
    if df.empty:
        raise RecvaeError(f"{source}: no interactions to preprocess")
    out = filter_min_counts(
        drop_duplicates(binarize(df, threshold)), min_item_users, min_user_items, iterate=iterate
    )
    if out.empty:
        raise RecvaeError(
            f"{source}: no interactions left after preprocessing (threshold={threshold}, "
            f"min_item_users={min_item_users}, min_user_items={min_user_items}); "
            "lower the threshold or the min counts"
        )
    return out
