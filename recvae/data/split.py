"""Splits into a :class:`~recvae.data.dataset.Dataset`.

- ``strong_generalization``: Liang et al.'s protocol, bit-for-bit (README, "The protocol"):
  disjoint training / validation / test users, item vocabulary from training users, 80/20
  fold-in.
- ``random_holdout``, ``temporal``, ``predefined``: weak generalization (held-out items of
  training users). A validation part is carved from each user's training rows for model
  selection, so the test set is never used to pick epochs or hyper-parameters.

Every function takes the preprocessed interactions: compact
:class:`~recvae.data.interactions.Interactions` (what ingestion passes; they are spent, because
their row buffer is sorted in place into the training matrix) or a tidy frame (``user``,
``item``[, ``timestamp``][, ``part``]). Per-user work runs a block of users at a time and every
matrix is built by sorting ``row << 32 | column`` keys, so the peak memory of a split is the
log's 8 bytes a row plus the matrices it produces.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recvae.data.dataset import Dataset, Part
from recvae.data.interactions import Interactions, chunks, keys_to_csr
from recvae.data.spec import SplitConfig
from recvae.errors import RecvaeError

log = logging.getLogger(__name__)

SEED = 98765  # the reference notebook's seed, for both the user permutation and the fold-in
MAX_SEED = 2**32 - 2  # RandomState's seeds are below 2**32, and the random split uses seed + 1
_LOW = np.int64((1 << 32) - 1)

Select = Callable[[int, int], np.ndarray]  # rows lo:hi -> which of them to take


def _csr(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """Binary CSR with a 1 at each (row, col) pair."""
    keys = (np.asarray(rows, dtype=np.int64) << 32) | np.asarray(cols, dtype=np.int64)
    return keys_to_csr(keys, shape)


def _matrix(
    data: Interactions,
    select: Select,
    row_of_user: np.ndarray,
    col_of_item: np.ndarray,
    shape: tuple[int, int],
    *,
    spend: bool = False,
) -> tuple[sp.csr_matrix, int]:
    """CSR of the selected rows whose item has a column (``col_of_item`` ≥ 0), and their count.

    With ``spend`` the keys are written over the log's own buffer (each chunk lands at or before
    where it was read) and the matrix over the keys
    (:func:`~recvae.data.interactions.keys_to_csr`); the log is spent.
    """
    def taken(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        p = data.pairs[lo:hi][select(lo, hi)]
        cols = col_of_item[p & _LOW]
        return p[cols >= 0] >> 32, cols[cols >= 0]

    if spend:
        keys = data.pairs
    else:
        keys = np.empty(sum(len(taken(lo, hi)[1]) for lo, hi in chunks(len(data))), dtype=np.int64)
    n = 0
    for lo, hi in chunks(len(data)):
        users, cols = taken(lo, hi)
        keys[n : n + len(cols)] = (row_of_user[users] << 32) | cols
        n += len(cols)
    if spend:
        data.take_pairs()
    return keys_to_csr(keys[:n], shape, reuse=spend), n


def _first_appearance(data: Interactions, select: Select) -> np.ndarray:
    """Item codes in order of first appearance among the selected rows (``pd.unique`` order)."""
    seen = np.zeros(data.n_item_codes, dtype=bool)
    order = []
    for lo, hi in chunks(len(data)):
        new = pd.unique(data.items(lo, hi)[select(lo, hi)])
        new = new[~seen[new]]
        seen[new] = True
        order.append(new)
    return np.concatenate(order) if order else np.zeros(0, dtype=np.int64)


def _users_present(data: Interactions) -> tuple[np.ndarray, np.ndarray]:
    """(mask of user codes with rows, code → index among them); indices follow the sorted ids,
    like ``pd.factorize(users, sort=True)``."""
    present = data.user_counts() > 0
    return present, np.cumsum(present) - 1


def _holdout(
    group_codes: np.ndarray,
    test_prop: float,
    rng: np.random.RandomState,
    min_items: int = 5,
    min_holdout: int = 0,
) -> np.ndarray:
    """:func:`holdout_proportion` drawing from ``rng``, which it advances."""
    order = np.argsort(group_codes, kind="stable")
    sorted_codes = group_codes[order]
    bounds = np.flatnonzero(np.diff(sorted_codes)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(order)]])
    mask = np.zeros(len(group_codes), dtype=bool)
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        n = end - start
        if n >= min_items:
            picked = rng.choice(n, size=max(min_holdout, int(test_prop * n)), replace=False)
            mask[order[start + picked]] = True
    return mask


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
    return _holdout(group_codes, test_prop, np.random.RandomState(seed), min_items, min_holdout)


def _per_user_holdout(
    data: Interactions,
    test_prop: float,
    seed: int,
    *,
    among: np.ndarray | None = None,
    min_holdout: int = 0,
) -> np.ndarray:
    """:func:`holdout_proportion` over every user of ``data`` (rows where ``among``, if given),
    one block of users at a time with one RNG stream, so the draws are those of a single call."""
    rng = np.random.RandomState(seed)
    held = np.zeros(len(data), dtype=bool)
    for rows in data.user_blocks():
        if among is not None:
            rows = rows[among[rows]]
        users = data.pairs[rows] >> 32
        held[rows[_holdout(users, test_prop, rng, min_holdout=min_holdout)]] = True
    return held


def _manifest(protocol: str, **params: Any) -> dict[str, Any]:
    return {"protocol": protocol, "split": params}


def _interactions(data: pd.DataFrame | Interactions) -> Interactions:
    return data if isinstance(data, Interactions) else Interactions.from_frame(data)


def strong_generalization(
    data: pd.DataFrame | Interactions,
    n_heldout_users: int,
    *,
    test_prop: float = 0.2,
    seed: int = SEED,
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
    data = _interactions(data)
    present, user_index = _users_present(data)
    n_users = int(present.sum())
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
    pos_of_user = np.where(present, position[user_index], -1)  # user code -> permuted position

    def users_at(lo: int, hi: int) -> np.ndarray:
        return (pos_of_user >= lo) & (pos_of_user < hi)

    is_train = users_at(0, n_train)
    # unique_sid = pd.unique(train_plays['movieId']): first-appearance order, as the reference.
    item_order = _first_appearance(data, lambda lo, hi: is_train[data.users(lo, hi)])
    col_of_item = np.full(data.n_item_codes, -1, dtype=np.int64)
    col_of_item[item_order] = np.arange(len(item_order))
    n_items = len(item_order)

    parts = {}
    dropped = 0
    for name, lo in (("validation", n_train), ("test", n_train + n_heldout_users)):
        pairs = data.pairs[data.rows_of_users(users_at(lo, lo + n_heldout_users))]
        users, cols = pairs >> 32, col_of_item[pairs & _LOW]
        known = cols >= 0
        dropped += int(len(pairs) - known.sum())
        users, cols = users[known], cols[known]
        held = holdout_proportion(user_index[users], test_prop, seed)
        rows = pos_of_user[users] - lo
        shape = (n_heldout_users, n_items)
        parts[name] = Part(
            fold_in=_csr(rows[~held], cols[~held], shape),
            holdout=_csr(rows[held], cols[held], shape),
            users=perm[lo : lo + n_heldout_users].astype(np.int64),
        )
    del pairs, users, cols, rows, held
    user_ids, item_ids = data.user_ids[present], data.item_ids[item_order]
    train, _ = _matrix(
        data, lambda lo, hi: is_train[data.users(lo, hi)], pos_of_user, col_of_item,
        (n_train, n_items), spend=True,
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
    data: Interactions, is_test: np.ndarray, validation_prop: float, seed: int, manifest: dict
) -> Dataset:
    """Weak-generalization Dataset from a per-row test mask; validation carved from training rows.

    Test rows on items no training row has are dropped (``manifest["drops"]["unknown_items"]``):
    no model can score an item outside its training vocabulary.
    """
    if not 0.0 < validation_prop < 1.0:
        raise RecvaeError(f"split.validation_prop must be in (0, 1), got {validation_prop}")
    present, user_index = _users_present(data)
    n_users = int(present.sum())

    def training(lo: int, hi: int) -> np.ndarray:
        return ~is_test[lo:hi]

    in_training = np.zeros(data.n_item_codes, dtype=bool)
    for lo, hi in chunks(len(data)):
        in_training[data.items(lo, hi)[training(lo, hi)]] = True
    item_order = np.flatnonzero(in_training)
    if len(item_order) == 0:
        raise RecvaeError("split: no training interactions (every row is a test row)")
    if _sortable(data.item_ids):
        item_order = item_order[np.argsort(data.item_ids[item_order], kind="stable")]
    else:
        item_order = _first_appearance(data, training)
    col_of_item = np.full(data.n_item_codes, -1, dtype=np.int64)
    col_of_item[item_order] = np.arange(len(item_order))
    n_items = len(item_order)
    # At least one validation target per user with ≥ 5 training items: int(0.1 · n) alone would
    # leave most users of a sparse log without any, and model selection would be noise.
    is_val = _per_user_holdout(data, validation_prop, seed, among=~is_test, min_holdout=1)
    shape = (n_users, n_items)

    def matrix(select: Select) -> tuple[sp.csr_matrix, int]:
        return _matrix(data, select, user_index, col_of_item, shape)

    train, _ = matrix(lambda lo, hi: ~is_test[lo:hi] & ~is_val[lo:hi])
    val, _ = matrix(lambda lo, hi: is_val[lo:hi])
    history, _ = matrix(training)
    test, n_test = matrix(lambda lo, hi: is_test[lo:hi])
    users = np.arange(n_users, dtype=np.int64)
    manifest = {**manifest, "drops": {"unknown_items": int(is_test.sum() - n_test)}}
    manifest["split"] = {**manifest["split"], "validation_prop": validation_prop, "seed": seed}
    return Dataset(
        train=train,
        train_users=users,
        validation=Part(fold_in=train, holdout=val, users=users),
        test=Part(fold_in=history, holdout=test, users=users),
        user_ids=np.asarray(data.user_ids[present]),
        item_ids=np.asarray(data.item_ids[item_order]),
        manifest=manifest,
    )


def _sortable(a: np.ndarray) -> bool:
    try:
        np.sort(a[:2])
        return True
    except TypeError:
        return False


def random_holdout(
    data: pd.DataFrame | Interactions,
    *,
    test_prop: float = 0.2,
    validation_prop: float = 0.1,
    seed: int = SEED,
) -> Dataset:
    """Per-user random holdout: ``int(test_prop · n)`` test items for each user with ≥ 5 items."""
    if not 0.0 < test_prop < 1.0:
        raise RecvaeError(f"split.test_prop must be in (0, 1), got {test_prop}")
    data = _interactions(data)
    is_test = _per_user_holdout(data, test_prop, seed)
    return _weak_dataset(
        data, is_test, validation_prop, seed + 1,
        _manifest("weak", method="random", test_prop=test_prop),
    )


def temporal(
    data: pd.DataFrame | Interactions,
    *,
    leave_last: int | None = 1,
    cutoff: float | None = None,
    validation_prop: float = 0.1,
    seed: int = SEED,
) -> Dataset:
    """Temporal split: each user's last ``leave_last`` interactions, or all interactions at or
    after ``cutoff`` (epoch seconds), are test rows. Needs timestamps.

    With ``leave_last``, users with no more than ``leave_last`` interactions keep them all in
    training (they have no targets). Equal times keep the log's order.
    """
    data = _interactions(data)
    ts = data.timestamp
    if ts is None:
        raise RecvaeError("temporal split needs timestamps; this source has no timestamp column")
    if (leave_last is None) == (cutoff is None):
        raise RecvaeError("temporal split: give exactly one of split.leave_last or split.cutoff")
    is_test = np.zeros(len(data), dtype=bool)
    if cutoff is not None:
        for lo, hi in chunks(len(data)):
            is_test[lo:hi] = ts[lo:hi] >= cutoff
        params: dict[str, Any] = {"cutoff": cutoff}
    else:
        if leave_last <= 0:
            raise RecvaeError(f"split.leave_last must be positive, got {leave_last}")
        for rows in data.user_blocks():
            users = pd.factorize(data.pairs[rows] >> 32, sort=True)[0]
            order = np.lexsort((ts[rows], users))  # by user, then time, then log order
            counts = np.bincount(users)
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            n = counts[users[order]]
            rank_from_end = n - (np.arange(len(order)) - starts[users[order]])
            is_test[rows[order]] = (rank_from_end <= leave_last) & (n > leave_last)
        params = {"leave_last": leave_last}
    return _weak_dataset(
        data, is_test, validation_prop, seed, _manifest("weak", method="temporal", **params)
    )


def predefined(
    data: pd.DataFrame | Interactions, *, validation_prop: float = 0.1, seed: int = SEED
) -> Dataset:
    """The source's own train/test split (a ``part`` column, e.g. LightGCN's Gowalla files)."""
    data = _interactions(data)
    if data.part is None:
        raise RecvaeError(
            "predefined split needs a source with its own train/test parts (e.g. source: lightgcn)"
        )
    used = np.zeros(len(data.parts), dtype=bool)
    for lo, hi in chunks(len(data)):
        used[data.part[lo:hi]] = True
    parts = {data.parts[k] for k in np.flatnonzero(used)}
    if not parts <= {"train", "test"} or "test" not in parts:
        raise RecvaeError(f"predefined split: expected parts 'train' and 'test', found {sorted(parts)}")
    return _weak_dataset(
        data, data.is_test(), validation_prop, seed, _manifest("weak", method="predefined")
    )


# Held-out users per part when the config does not say: 10 % of users, at most the paper's
# ML-20M value. Netflix (40,000) and MSD (50,000) set theirs in pipelines/*.yaml.
DEFAULT_HELDOUT_SHARE = 0.1
DEFAULT_HELDOUT_CAP = 10_000


def _n_users(data: pd.DataFrame | Interactions) -> int:
    if isinstance(data, Interactions):
        return int(np.count_nonzero(data.user_counts()))
    return data["user"].nunique()


def _strong_from_spec(data: pd.DataFrame | Interactions, s: SplitConfig) -> Dataset:
    n = s.n_heldout_users
    if n is None:
        n_users = _n_users(data)
        n = max(1, min(DEFAULT_HELDOUT_CAP, int(DEFAULT_HELDOUT_SHARE * n_users)))
        log.info("split.n_heldout_users not set: using %d (10%% of %d users)", n, n_users)
    return strong_generalization(data, n, test_prop=s.test_prop, seed=s.seed)


def _temporal_from_spec(data: pd.DataFrame | Interactions, s: SplitConfig) -> Dataset:
    leave_last = s.leave_last if s.leave_last is not None or s.cutoff is not None else 1
    return temporal(
        data, leave_last=leave_last if s.cutoff is None else None, cutoff=s.cutoff,
        validation_prop=s.validation_prop, seed=s.seed,
    )


# The one registry of splits: ``split.method`` → how a SplitConfig applies to the interactions.
SPLITS: dict[str, Callable[[pd.DataFrame | Interactions, SplitConfig], Dataset]] = {
    "strong": _strong_from_spec,
    "random": lambda df, s: random_holdout(
        df, test_prop=s.test_prop, validation_prop=s.validation_prop, seed=s.seed
    ),
    "temporal": _temporal_from_spec,
    "predefined": lambda df, s: predefined(df, validation_prop=s.validation_prop, seed=s.seed),
}


def uses_timestamps(s: SplitConfig) -> bool:
    """Whether the split reads timestamps (otherwise they matter only to drop duplicates)."""
    return s.method == "temporal"


def apply_split(data: pd.DataFrame | Interactions, s: SplitConfig) -> Dataset:
    """Split preprocessed interactions as ``s.method`` says (one of :data:`SPLITS`)."""
    if s.method not in SPLITS:
        raise RecvaeError(
            f"data.split.method: unknown split {s.method!r}; expected one of {', '.join(SPLITS)}"
        )
    # numpy's RandomState takes [0, 2**32); the random split also draws with seed + 1
    if isinstance(s.seed, bool) or not isinstance(s.seed, int) or not 0 <= s.seed <= MAX_SEED:
        raise RecvaeError(f"data.split.seed: expected an integer in [0, {MAX_SEED}], got {s.seed!r}")
    return SPLITS[s.method](data, s)
