"""The DataFrame pipeline ingest used before the compact one (commit 3d6a999), kept verbatim
as an oracle: tests/data/test_equivalence.py checks that the compact pipeline builds the same
datasets, bit for bit, for every split and preprocessing option.
"""

# ruff: noqa
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recvae.data.dataset import Dataset, Part
from recvae.errors import RecvaeError

SEED = 98765


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


def _csr(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    m = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=shape)
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def holdout_proportion(
    group_codes: np.ndarray,
    test_prop: float,
    seed: int = SEED,
    min_items: int = 5,
    min_holdout: int = 0,
) -> np.ndarray:
    """Boolean mask of held-out rows: for each group (user) with ≥ ``min_items`` rows,
    ``max(min_holdout, int(test_prop · n))`` rows drawn without replacement; smaller groups keep
    all rows.

    Rows must be in data order. Groups are visited in sorted code order and drawn with a
    legacy ``RandomState(seed)``, exactly as ``split_train_test_proportion`` in the reference
    notebook (pandas groupby → ``np.random.choice`` per user), so the same users get the same
    targets. The per-user loop is the price of that exactness: ``choice`` consumes the RNG
    stream user by user and cannot be vectorized without changing the draws. It costs ~10 µs per
    evaluation user (0.5 s for MSD's 50k).
    """
    order = np.argsort(group_codes, kind="stable")
    sorted_codes = group_codes[order]
    bounds = np.flatnonzero(np.diff(sorted_codes)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(order)]])
    rng = np.random.RandomState(seed)
    mask = np.zeros(len(group_codes), dtype=bool)
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        n = end - start
        if n >= min_items:
            picked = rng.choice(n, size=max(min_holdout, int(test_prop * n)), replace=False)
            mask[order[start + picked]] = True
    return mask


def _manifest(protocol: str, **params: Any) -> dict[str, Any]:
    return {"protocol": protocol, "split": params}


def strong_generalization(
    df: pd.DataFrame, n_heldout_users: int, *, test_prop: float = 0.2, seed: int = SEED
) -> Dataset:
    """Liang et al.'s strong-generalization split.

    Users (sorted ids) are permuted with ``RandomState(seed)``; the last ``n_heldout_users`` are
    test users, the ``n_heldout_users`` before them validation users, the rest training users.
    The items are those seen by training users, in order of first appearance; validation and
    test interactions on other items are dropped; each evaluation user with ≥ 5 items gets
    ``int(test_prop · n)`` held-out targets, the rest is the fold-in.
    """
    if n_heldout_users <= 0:
        raise RecvaeError(f"split.n_heldout_users must be positive, got {n_heldout_users}")
    if not 0.0 < test_prop < 1.0:
        raise RecvaeError(f"split.test_prop must be in (0, 1), got {test_prop}")
    user_codes, user_ids = pd.factorize(df["user"], sort=True)
    n_users = len(user_ids)
    if n_users <= 2 * n_heldout_users:
        raise RecvaeError(
            f"strong-generalization split needs more than 2 × n_heldout_users = "
            f"{2 * n_heldout_users} users, the data has {n_users} after preprocessing; "
            "lower split.n_heldout_users"
        )
    perm = np.random.RandomState(seed).permutation(n_users)
    position = np.empty(n_users, dtype=np.int64)
    position[perm] = np.arange(n_users)
    n_train = n_users - 2 * n_heldout_users
    row_pos = position[user_codes]

    items = df["item"].to_numpy()
    is_train = row_pos < n_train
    # unique_sid = pd.unique(train_plays['movieId']): first-appearance order, as the reference.
    item_ids = pd.unique(items[is_train])
    item_code = pd.Index(item_ids).get_indexer(items)
    n_items = len(item_ids)
    train = _csr(row_pos[is_train], item_code[is_train], (n_train, n_items))

    parts = {}
    dropped = 0
    for name, lo in (("validation", n_train), ("test", n_train + n_heldout_users)):
        in_part = (row_pos >= lo) & (row_pos < lo + n_heldout_users)
        known = in_part & (item_code >= 0)
        dropped += int(in_part.sum() - known.sum())
        idx = np.flatnonzero(known)
        held = holdout_proportion(user_codes[idx], test_prop, seed)
        rows, cols = row_pos[idx] - lo, item_code[idx]
        shape = (n_heldout_users, n_items)
        parts[name] = Part(
            fold_in=_csr(rows[~held], cols[~held], shape),
            holdout=_csr(rows[held], cols[held], shape),
            users=perm[lo : lo + n_heldout_users].astype(np.int64),
        )
    manifest = _manifest(
        "strong", method="strong", n_heldout_users=n_heldout_users, test_prop=test_prop, seed=seed
    )
    manifest["dropped_unknown_item_interactions"] = dropped
    return Dataset(
        train=train,
        train_users=perm[:n_train].astype(np.int64),
        validation=parts["validation"],
        test=parts["test"],
        user_ids=np.asarray(user_ids),
        item_ids=np.asarray(item_ids),
        manifest=manifest,
    )


def _weak_dataset(
    df: pd.DataFrame, is_test: np.ndarray, validation_prop: float, seed: int, manifest: dict
) -> Dataset:
    """Weak-generalization Dataset from a per-row test mask; validation carved from training rows."""
    if not 0.0 < validation_prop < 1.0:
        raise RecvaeError(f"split.validation_prop must be in (0, 1), got {validation_prop}")
    user_codes, user_ids = pd.factorize(df["user"], sort=True)
    n_users = len(user_ids)
    items = df["item"].to_numpy()
    item_ids = np.sort(pd.unique(items[~is_test])) if _sortable(items) else pd.unique(items[~is_test])
    if len(item_ids) == 0:
        raise RecvaeError("split: no training interactions (every row is a test row)")
    item_code = pd.Index(item_ids).get_indexer(items)
    n_items = len(item_ids)
    train_idx = np.flatnonzero(~is_test)
    # At least one validation target per user with ≥ 5 training items: int(0.1 · n) alone would
    # leave most users of a sparse log without any, and model selection would be noise.
    is_val = holdout_proportion(user_codes[train_idx], validation_prop, seed, min_holdout=1)
    test_idx = np.flatnonzero(is_test & (item_code >= 0))
    shape = (n_users, n_items)
    fit_rows = train_idx[~is_val]
    train = _csr(user_codes[fit_rows], item_code[fit_rows], shape)
    val = _csr(user_codes[train_idx[is_val]], item_code[train_idx[is_val]], shape)
    history = _csr(user_codes[train_idx], item_code[train_idx], shape)
    test = _csr(user_codes[test_idx], item_code[test_idx], shape)
    users = np.arange(n_users, dtype=np.int64)
    manifest = {**manifest, "dropped_unknown_item_interactions": int(is_test.sum() - len(test_idx))}
    manifest["split"] = {**manifest["split"], "validation_prop": validation_prop, "seed": seed}
    return Dataset(
        train=train,
        train_users=users,
        validation=Part(fold_in=train, holdout=val, users=users),
        test=Part(fold_in=history, holdout=test, users=users),
        user_ids=np.asarray(user_ids),
        item_ids=np.asarray(item_ids),
        manifest=manifest,
    )


def _sortable(a: np.ndarray) -> bool:
    try:
        np.sort(a[:2])
        return True
    except TypeError:
        return False


def random_holdout(
    df: pd.DataFrame,
    *,
    test_prop: float = 0.2,
    validation_prop: float = 0.1,
    seed: int = SEED,
) -> Dataset:
    """Per-user random holdout: ``int(test_prop · n)`` test items for each user with ≥ 5 items."""
    if not 0.0 < test_prop < 1.0:
        raise RecvaeError(f"split.test_prop must be in (0, 1), got {test_prop}")
    user_codes = pd.factorize(df["user"], sort=True)[0]
    is_test = holdout_proportion(user_codes, test_prop, seed)
    return _weak_dataset(
        df, is_test, validation_prop, seed + 1,
        _manifest("weak", method="random", test_prop=test_prop),
    )


def temporal(
    df: pd.DataFrame,
    *,
    leave_last: int | None = 1,
    cutoff: float | None = None,
    validation_prop: float = 0.1,
    seed: int = SEED,
) -> Dataset:
    """Temporal split: each user's last ``leave_last`` interactions, or all interactions at or
    after ``cutoff`` (epoch seconds), are test rows. Needs a ``timestamp`` column.

    With ``leave_last``, users with no more than ``leave_last`` interactions keep them all in
    training (they have no targets).
    """
    if "timestamp" not in df.columns:
        raise RecvaeError("temporal split needs timestamps; this source has no timestamp column")
    if (leave_last is None) == (cutoff is None):
        raise RecvaeError("temporal split: give exactly one of split.leave_last or split.cutoff")
    ts = df["timestamp"].to_numpy()
    if cutoff is not None:
        is_test = ts >= cutoff
        params: dict[str, Any] = {"cutoff": cutoff}
    else:
        if leave_last <= 0:
            raise RecvaeError(f"split.leave_last must be positive, got {leave_last}")
        user_codes = pd.factorize(df["user"], sort=True)[0]
        order = np.lexsort((ts, user_codes))  # by user, then time
        counts = np.bincount(user_codes)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank_from_end = counts[user_codes[order]] - (np.arange(len(order)) - starts[user_codes[order]])
        is_test = np.zeros(len(df), dtype=bool)
        is_test[order] = (rank_from_end <= leave_last) & (counts[user_codes[order]] > leave_last)
        params = {"leave_last": leave_last}
    return _weak_dataset(
        df, is_test, validation_prop, seed, _manifest("weak", method="temporal", **params)
    )


def predefined(df: pd.DataFrame, *, validation_prop: float = 0.1, seed: int = SEED) -> Dataset:
    """The source's own train/test split (a ``part`` column, e.g. LightGCN's Gowalla files)."""
    if "part" not in df.columns:
        raise RecvaeError(
            "predefined split needs a source with its own train/test parts (e.g. source: lightgcn)"
        )
    parts = set(pd.unique(df["part"]))
    if not parts <= {"train", "test"} or "test" not in parts:
        raise RecvaeError(f"predefined split: expected parts 'train' and 'test', found {sorted(parts)}")
    is_test = (df["part"] == "test").to_numpy()
    return _weak_dataset(df, is_test, validation_prop, seed, _manifest("weak", method="predefined"))
