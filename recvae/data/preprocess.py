"""Preprocessing as in Liang et al.: binarize, drop duplicates, min-count filters.

The three steps mirror the reference notebook's named functions so a reader can check them
against the paper's text. Input and output are tidy frames with columns ``user``, ``item``,
``value`` (and optionally ``timestamp`` and ``part``).
"""

from __future__ import annotations

import pandas as pd

from recvae.errors import RecvaeError


def binarize(df: pd.DataFrame, threshold: float | None) -> pd.DataFrame:
    """Keep interactions with ``value > threshold`` as positives of value 1.

    ``threshold=None`` keeps every interaction (e.g. MSD play counts, implicit logs).
    """
    if threshold is not None:
        df = df[df["value"].to_numpy() > threshold]
    return df.assign(value=1.0)


def drop_duplicates(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (user, item[, part]); with timestamps the most recent interaction is kept."""
    keys = ["user", "item"] + (["part"] if "part" in df.columns else [])
    if "timestamp" in df.columns:
        df = df.sort_values("timestamp", kind="stable")
        return df.drop_duplicates(keys, keep="last").sort_index(kind="stable")
    return df.drop_duplicates(keys, keep="first")


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
            counts = df["item"].map(df["item"].value_counts())
            df = df[counts.to_numpy() >= min_item_users]
        if min_user_items > 0:
            counts = df["user"].map(df["user"].value_counts())
            df = df[counts.to_numpy() >= min_user_items]
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
