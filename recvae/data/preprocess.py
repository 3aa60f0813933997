"""Preprocessing as in Liang et al.: binarize, drop duplicates, min-count filters.

The three steps mirror the reference notebook's named functions so a reader can check them
against the paper's text. Input and output are tidy frames with columns ``user``, ``item``,
``value`` (and optionally ``timestamp`` and ``part``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recvae.errors import RecvaeError


#: The reasons an interaction is dropped before the split, as keys of ``drops``; the split adds
#: ``unknown_items`` (see ``recvae.data.split``).
DROP_REASONS = ("below_threshold", "duplicates", "min_item_users", "min_user_items")


def binarize(
    df: pd.DataFrame,
    threshold: float | None,
    *,
    allow_negative: bool = False,
    source: str = "the input",
) -> pd.DataFrame:
    """Keep interactions with ``value > threshold`` as positives of value 1.

    ``threshold=None`` keeps every interaction (e.g. MSD play counts, implicit logs); a negative
    value is then an error (it would count as a like) unless ``allow_negative``.
    """
    values = df["value"].to_numpy()
    if threshold is not None:
        return df[values > threshold].assign(value=1.0)
    negative = values < 0
    if negative.any() and not allow_negative:
        i = int(np.argmax(negative))
        raise RecvaeError(
            f"{source}: {int(negative.sum()):,} interaction(s) with a negative value (first: user "
            f"{df['user'].iloc[i]}, item {df['item'].iloc[i]}, value {values[i]:g}); with "
            "preprocess.threshold null every interaction is a positive: set a threshold, or "
            "preprocess.allow_negative: true (--allow-negative) to keep them"
        )
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
    df: pd.DataFrame,
    min_item_users: int = 0,
    min_user_items: int = 5,
    *,
    iterate: bool = False,
    drops: dict[str, int] | None = None,
) -> pd.DataFrame:
    """Drop items with fewer than ``min_item_users`` users, then users with fewer than
    ``min_user_items`` items, in one pass (the paper's order); ``iterate=True`` repeats until
    both hold (k-core). ``drops``, if given, gains the interactions each filter dropped
    (keys ``min_item_users`` and ``min_user_items``).
    """
    if min_item_users < 0 or min_user_items < 0:
        raise RecvaeError(
            f"min counts must be ≥ 0, got min_item_users={min_item_users}, "
            f"min_user_items={min_user_items}"
        )
    counts = {"min_item_users": 0, "min_user_items": 0}
    while True:
        n_before = len(df)
        for key, column, minimum in (
            ("min_item_users", "item", min_item_users), ("min_user_items", "user", min_user_items)
        ):
            if minimum > 0:
                codes = _codes(df[column])
                n = len(df)
                df = df[np.bincount(codes)[codes] >= minimum]
                counts[key] += n - len(df)
        if not iterate or len(df) == n_before:
            break
    if drops is not None:
        for key, n in counts.items():
            drops[key] = drops.get(key, 0) + n
    return df


def preprocess(
    df: pd.DataFrame,
    *,
    threshold: float | None = 3.5,
    min_item_users: int = 0,
    min_user_items: int = 5,
    iterate: bool = False,
    allow_negative: bool = False,
    source: str = "the input",
    drops: dict[str, int] | None = None,
) -> pd.DataFrame:
    """Binarize → drop duplicates → min-count filters; raises if nothing is left.

    ``drops``, if given, is filled with the number of interactions each step dropped, one key
    per reason of :data:`DROP_REASONS`.
    """
    if df.empty:
        raise RecvaeError(f"{source}: no interactions to preprocess")
    counts = dict.fromkeys(DROP_REASONS, 0)
    positives = binarize(df, threshold, allow_negative=allow_negative, source=source)
    counts["below_threshold"] = len(df) - len(positives)
    unique = drop_duplicates(positives)
    counts["duplicates"] = len(positives) - len(unique)
    out = filter_min_counts(unique, min_item_users, min_user_items, iterate=iterate, drops=counts)
    if drops is not None:
        drops.update(counts)
    if out.empty:
        raise RecvaeError(
            f"{source}: no interactions left after preprocessing (threshold={threshold}, "
            f"min_item_users={min_item_users}, min_user_items={min_user_items}); "
            "lower the threshold or the min counts"
        )
    return out
