"""Preprocessing as in Liang et al.: binarize, drop duplicates, min-count filters.

The three steps mirror the reference notebook's named functions so a reader can check them
against the paper's text. They run on compact :class:`~recvae.data.interactions.Interactions`
(binarization happens as the log is read: ``InteractionsBuilder(threshold=...)``), in place and
chunk by chunk, so a 50M-row log never becomes a wide DataFrame. The DataFrame functions below
(``binarize``, ``drop_duplicates``, ``filter_min_counts``, ``preprocess``) take and return tidy
frames with columns ``user``, ``item``, ``value`` (and optionally ``timestamp`` and ``part``) and
run the same code.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from recvae.data.interactions import Interactions, chunks
from recvae.errors import RecvaeError


# =========================================================================== compact, in place
def drop_duplicate_rows(log: Interactions) -> None:
    """One row per (user, item[, part]); with timestamps the most recent interaction is kept
    (the last in log order among equal times), else the first in log order.

    Duplicates share a user, so users are checked a range at a time (about N/16 rows): the range's
    keys are sorted and compared with their neighbours, 8 bytes a row of the range. Only a range
    that has duplicates is resolved row by row.
    """
    keep: np.ndarray | None = None
    is_test = log.is_test()
    for lo, hi in log.user_ranges():
        keys = log.pairs_in(lo, hi, tag=is_test)
        keys.sort()
        if not (keys[1:] == keys[:-1]).any():
            continue
        del keys
        rows = log.rows_in(lo, hi)
        key = log.pairs[rows]
        if is_test is not None:
            key |= is_test[rows].astype(np.int64) << 63
        if log.timestamp is not None:
            order = np.argsort(log.timestamp[rows], kind="stable")
            kept = np.zeros(len(rows), dtype=bool)
            kept[order] = ~pd.Series(key[order]).duplicated(keep="last").to_numpy()
        else:
            kept = ~pd.Series(key).duplicated(keep="first").to_numpy()
        if keep is None:
            keep = np.ones(len(log), dtype=bool)
        keep[rows] = kept
    if keep is not None:
        log.compress(keep)


def filter_rows_by_counts(
    log: Interactions, min_item_users: int = 0, min_user_items: int = 5, *, iterate: bool = False
) -> None:
    """Drop items with fewer than ``min_item_users`` users, then users with fewer than
    ``min_user_items`` items, in one pass (the paper's order); ``iterate=True`` repeats until
    both hold (k-core). Counts are of rows, so duplicates must be gone first.
    """
    if min_item_users < 0 or min_user_items < 0:
        raise RecvaeError(
            f"min counts must be ≥ 0, got min_item_users={min_item_users}, "
            f"min_user_items={min_user_items}"
        )
    while True:
        n_before = len(log)
        if min_item_users > 0:
            _keep_codes(log, log.item_counts() >= min_item_users, log.items)
        if min_user_items > 0:
            _keep_codes(log, log.user_counts() >= min_user_items, log.users)
        if not iterate or len(log) == n_before:
            return


def _keep_codes(
    log: Interactions, ok: np.ndarray, codes_of: Callable[[int, int], np.ndarray]
) -> None:
    """Keep the rows whose code (``codes_of(lo, hi)``) is ``ok``."""
    keep = np.empty(len(log), dtype=bool)
    for lo, hi in chunks(len(log)):
        keep[lo:hi] = ok[codes_of(lo, hi)]
    if not keep.all():
        log.compress(keep)


def preprocess_interactions(
    log: Interactions,
    *,
    min_item_users: int = 0,
    min_user_items: int = 5,
    iterate: bool = False,
    threshold: float | None = None,
    source: str = "the input",
) -> Interactions:
    """Drop duplicates → min-count filters, in place; raises if nothing is left.

    ``log`` holds the positives already (the threshold was applied as it was read; it is passed
    here only to word the error).
    """
    if log.rows_read == 0 and len(log) == 0:
        raise RecvaeError(f"{source}: no interactions to preprocess")
    drop_duplicate_rows(log)
    filter_rows_by_counts(log, min_item_users, min_user_items, iterate=iterate)
    if len(log) == 0:
        raise RecvaeError(
            f"{source}: no interactions left after preprocessing (threshold={threshold}, "
            f"min_item_users={min_item_users}, min_user_items={min_user_items}); "
            "lower the threshold or the min counts"
        )
    return log


# =========================================================================== DataFrames
def binarize(df: pd.DataFrame, threshold: float | None) -> pd.DataFrame:
    """Keep interactions with ``value > threshold`` as positives of value 1.

    ``threshold=None`` keeps every interaction (e.g. MSD play counts, implicit logs).
    """
    if threshold is not None:
        df = df[df["value"].to_numpy() > threshold]
    return df.assign(value=1.0)


def drop_duplicates(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``df`` that :func:`drop_duplicate_rows` keeps."""
    log = Interactions.from_frame(df, keep_rows=True)
    drop_duplicate_rows(log)
    return df if len(log) == len(df) else df.iloc[log.rows]


def filter_min_counts(
    df: pd.DataFrame, min_item_users: int = 0, min_user_items: int = 5, *, iterate: bool = False
) -> pd.DataFrame:
    """The rows of ``df`` that :func:`filter_rows_by_counts` keeps."""
    log = Interactions.from_frame(df, keep_rows=True)
    filter_rows_by_counts(log, min_item_users, min_user_items, iterate=iterate)
    return df.iloc[log.rows]


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
    log = Interactions.from_frame(df, threshold=threshold, keep_rows=True)
    preprocess_interactions(
        log,
        min_item_users=min_item_users,
        min_user_items=min_user_items,
        iterate=iterate,
        threshold=threshold,
        source=source,
    )
    return df.iloc[log.rows].assign(value=1.0)
