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


#: The reasons an interaction is dropped before the split, as keys of ``drops``; the split adds
#: ``unknown_items`` (see ``recvae.data.split``).
DROP_REASONS = ("below_threshold", "duplicates", "min_item_users", "min_user_items")


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
    log: Interactions,
    min_item_users: int = 0,
    min_user_items: int = 5,
    *,
    iterate: bool = False,
    drops: dict[str, int] | None = None,
) -> None:
    """Drop items with fewer than ``min_item_users`` users, then users with fewer than
    ``min_user_items`` items, in one pass (the paper's order); ``iterate=True`` repeats until
    both hold (k-core). Counts are of rows, so duplicates must be gone first. ``drops``, if
    given, gains the rows each filter dropped (keys ``min_item_users`` and ``min_user_items``).
    """
    if min_item_users < 0 or min_user_items < 0:
        raise RecvaeError(
            f"min counts must be ≥ 0, got min_item_users={min_item_users}, "
            f"min_user_items={min_user_items}"
        )
    counts = {"min_item_users": 0, "min_user_items": 0}
    while True:
        n_before = len(log)
        if min_item_users > 0:
            n = len(log)
            _keep_codes(log, log.item_counts() >= min_item_users, log.items)
            counts["min_item_users"] += n - len(log)
        if min_user_items > 0:
            n = len(log)
            _keep_codes(log, log.user_counts() >= min_user_items, log.users)
            counts["min_user_items"] += n - len(log)
        if not iterate or len(log) == n_before:
            break
    if drops is not None:
        for key, n in counts.items():
            drops[key] = drops.get(key, 0) + n


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
    drops: dict[str, int] | None = None,
) -> Interactions:
    """Drop duplicates → min-count filters, in place; raises if nothing is left.

    ``log`` holds the positives already (the threshold was applied as it was read; it is passed
    here only to word the error). ``drops``, if given, is filled with the number of rows each
    step dropped, one key per reason of :data:`DROP_REASONS` (below the threshold: the rows read
    but not kept).
    """
    if log.rows_read == 0 and len(log) == 0:
        raise RecvaeError(f"{source}: no interactions to preprocess")
    counts = dict.fromkeys(DROP_REASONS, 0)
    counts["below_threshold"] = log.rows_read - len(log)
    n = len(log)
    drop_duplicate_rows(log)
    counts["duplicates"] = n - len(log)
    filter_rows_by_counts(log, min_item_users, min_user_items, iterate=iterate, drops=counts)
    if drops is not None:
        drops.update(counts)
    if len(log) == 0:
        raise RecvaeError(
            f"{source}: no interactions left after preprocessing (threshold={threshold}, "
            f"min_item_users={min_item_users}, min_user_items={min_user_items}); "
            "lower the threshold or the min counts"
        )
    return log


# =========================================================================== DataFrames
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


def drop_duplicates(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``df`` that :func:`drop_duplicate_rows` keeps."""
    log = Interactions.from_frame(df, keep_rows=True)
    drop_duplicate_rows(log)
    return df if len(log) == len(df) else df.iloc[log.rows]


def filter_min_counts(
    df: pd.DataFrame,
    min_item_users: int = 0,
    min_user_items: int = 5,
    *,
    iterate: bool = False,
    drops: dict[str, int] | None = None,
) -> pd.DataFrame:
    """The rows of ``df`` that :func:`filter_rows_by_counts` keeps; ``drops``, if given, gains
    the interactions each filter dropped (keys ``min_item_users`` and ``min_user_items``)."""
    log = Interactions.from_frame(df, keep_rows=True)
    filter_rows_by_counts(log, min_item_users, min_user_items, iterate=iterate, drops=drops)
    return df.iloc[log.rows]


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
    log = Interactions.from_frame(
        df, threshold=threshold, allow_negative=allow_negative, source=source, keep_rows=True
    )
    preprocess_interactions(
        log,
        min_item_users=min_item_users,
        min_user_items=min_user_items,
        iterate=iterate,
        threshold=threshold,
        source=source,
        drops=drops,
    )
    return df.iloc[log.rows].assign(value=1.0)
