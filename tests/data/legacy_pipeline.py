"""The DataFrame pipeline of main before the compact one was merged (commit 339dab9), kept
verbatim as an oracle: ``recvae/data/preprocess.py`` and ``recvae/data/split.py`` whole, and
``seen_pairs`` of ``recvae/data/ingest.py``, with ``ingest_frame`` at the end repeating that
commit's ``ingest()`` steps between reading and saving. tests/data/test_equivalence.py checks
that the compact pipeline builds the same datasets, bit for bit, manifests (drop counts)
included, for every split and preprocessing option.
"""

# ruff: noqa
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recvae.data.dataset import Dataset, Part
from recvae.data.spec import SplitConfig
from recvae.errors import RecvaeError

# =========================================================================== preprocess.py
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


# =========================================================================== split.py
log = logging.getLogger(__name__)

SEED = 98765  # the reference notebook's seed, for both the user permutation and the fold-in
MAX_SEED = 2**32 - 2  # RandomState's seeds are below 2**32, and the random split uses seed + 1


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
    test interactions on other items are dropped (counted in ``manifest["drops"]
    ["unknown_items"]``); each evaluation user with ≥ 5 items gets
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
    manifest["drops"] = {"unknown_items": dropped}
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
    """Weak-generalization Dataset from a per-row test mask; validation carved from training rows.

    Test rows on items no training row has are dropped (``manifest["drops"]["unknown_items"]``):
    no model can score an item outside its training vocabulary.
    """
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
    manifest = {**manifest, "drops": {"unknown_items": int(is_test.sum() - len(test_idx))}}
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


# Held-out users per part when the config does not say: 10 % of users, at most the paper's
# ML-20M value. Netflix (40,000) and MSD (50,000) set theirs in pipelines/*.yaml.
DEFAULT_HELDOUT_SHARE = 0.1
DEFAULT_HELDOUT_CAP = 10_000


def _strong_from_spec(df: pd.DataFrame, s: SplitConfig) -> Dataset:
    n = s.n_heldout_users
    if n is None:
        n_users = df["user"].nunique()
        n = max(1, min(DEFAULT_HELDOUT_CAP, int(DEFAULT_HELDOUT_SHARE * n_users)))
        log.info("split.n_heldout_users not set: using %d (10%% of %d users)", n, n_users)
    return strong_generalization(df, n, test_prop=s.test_prop, seed=s.seed)


def _temporal_from_spec(df: pd.DataFrame, s: SplitConfig) -> Dataset:
    leave_last = s.leave_last if s.leave_last is not None or s.cutoff is not None else 1
    return temporal(
        df, leave_last=leave_last if s.cutoff is None else None, cutoff=s.cutoff,
        validation_prop=s.validation_prop, seed=s.seed,
    )


# The one registry of splits: ``split.method`` → how a SplitConfig applies to a frame.
SPLITS: dict[str, Callable[[pd.DataFrame, SplitConfig], Dataset]] = {
    "strong": _strong_from_spec,
    "random": lambda df, s: random_holdout(
        df, test_prop=s.test_prop, validation_prop=s.validation_prop, seed=s.seed
    ),
    "temporal": _temporal_from_spec,
    "predefined": lambda df, s: predefined(df, validation_prop=s.validation_prop, seed=s.seed),
}


def apply_split(df: pd.DataFrame, s: SplitConfig) -> Dataset:
    """Split a preprocessed frame as ``s.method`` says (one of :data:`SPLITS`)."""
    if s.method not in SPLITS:
        raise RecvaeError(
            f"data.split.method: unknown split {s.method!r}; expected one of {', '.join(SPLITS)}"
        )
    # numpy's RandomState takes [0, 2**32); the random split also draws with seed + 1
    if isinstance(s.seed, bool) or not isinstance(s.seed, int) or not 0 <= s.seed <= MAX_SEED:
        raise RecvaeError(f"data.split.seed: expected an integer in [0, {MAX_SEED}], got {s.seed!r}")
    return SPLITS[s.method](df, s)


# =========================================================================== ingest.py
def seen_pairs(
    raw: pd.DataFrame, user_ids: np.ndarray, item_ids: np.ndarray
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Every (user, item) pair of the raw log, whatever its value: (bool CSR, dropped user ids).

    Rows are ``user_ids`` (the dataset's users, in order) followed by the users of the log that
    preprocessing dropped (sorted ids, returned); columns are ``item_ids``, and pairs on other
    items are left out (no model can recommend them).
    """
    users = raw["user"]
    rows = pd.Index(user_ids).get_indexer(users)
    dropped = rows < 0
    codes, dropped_ids = pd.factorize(users[dropped], sort=True)
    rows[dropped] = len(user_ids) + codes
    cols = pd.Index(item_ids).get_indexer(raw["item"])
    keep = cols >= 0
    seen = sp.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.bool_), (rows[keep], cols[keep])),
        shape=(len(user_ids) + len(dropped_ids), len(item_ids)),
    )
    seen.sum_duplicates()  # a user who rated an item twice: one pair
    return seen, np.asarray(dropped_ids)


def ingest_frame(raw: pd.DataFrame, pp: dict, split: SplitConfig) -> Dataset:
    """``ingest()``'s steps from the raw frame to the dataset it saves (``pp``: the keyword
    arguments of ``preprocess``), with the manifest entries that depend on the data."""
    drops: dict[str, int] = {}
    df = preprocess(raw, **pp, drops=drops)
    ds = apply_split(df, split)
    n_positives = len(df)
    ds.seen, ds.dropped_user_ids = seen_pairs(raw, ds.user_ids, ds.item_ids)
    ds.manifest.update(
        {
            "raw_interactions": len(raw),
            "raw_users": ds.seen.shape[0],
            "dropped_users": len(ds.dropped_user_ids),
            "positive_interactions": n_positives,
            "drops": {**drops, **ds.manifest.get("drops", {})},
        }
    )
    return ds
