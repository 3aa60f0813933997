"""Tests for recvae.data.split.

The strong-generalization split is checked against a line-by-line re-implementation of Liang's
reference notebook (``VAE_ML20M_WWW2018.ipynb``); the weak splits against their invariants.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import make_ratings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recvae.data.dataset import Dataset, Part
from recvae.data.preprocess import preprocess
from recvae.data.split import (
    SEED,
    holdout_proportion,
    predefined,
    random_holdout,
    strong_generalization,
    temporal,
)
from recvae.errors import RecvaeError


# ============================================================ the reference notebook
@contextmanager
def global_numpy_rng() -> Iterator[None]:
    """The notebook seeds numpy's global RNG; restore it so other tests are unaffected."""
    state = np.random.get_state()
    try:
        yield
    finally:
        np.random.set_state(state)


def liang_notebook(raw_data: pd.DataFrame, n_heldout_users: int, min_uc: int = 5, min_sc: int = 0) -> dict:
    """The reference notebook's preprocessing, as written there (modern pandas spelling)."""
    raw_data = raw_data[raw_data["rating"] > 3.5]

    def get_count(tp, id):
        playcount_groupbyid = tp[[id]].groupby(id)
        count = playcount_groupbyid.size()
        return count

    def filter_triplets(tp, min_uc=5, min_sc=0):
        if min_sc > 0:
            itemcount = get_count(tp, "movieId")
            tp = tp[tp["movieId"].isin(itemcount.index[itemcount >= min_sc])]
        if min_uc > 0:
            usercount = get_count(tp, "userId")
            tp = tp[tp["userId"].isin(usercount.index[usercount >= min_uc])]
        usercount, itemcount = get_count(tp, "userId"), get_count(tp, "movieId")
        return tp, usercount, itemcount

    raw_data, user_activity, item_popularity = filter_triplets(raw_data, min_uc, min_sc)
    unique_uid = user_activity.index
    np.random.seed(98765)
    idx_perm = np.random.permutation(unique_uid.size)
    unique_uid = unique_uid[idx_perm]
    n_users = unique_uid.size
    tr_users = unique_uid[: (n_users - n_heldout_users * 2)]
    vd_users = unique_uid[(n_users - n_heldout_users * 2) : (n_users - n_heldout_users)]
    te_users = unique_uid[(n_users - n_heldout_users) :]
    train_plays = raw_data.loc[raw_data["userId"].isin(tr_users)]
    unique_sid = pd.unique(train_plays["movieId"])

    def split_train_test_proportion(data, test_prop=0.2):
        data_grouped_by_user = data.groupby("userId")
        tr_list, te_list = list(), list()
        np.random.seed(98765)
        for _, group in data_grouped_by_user:
            n_items_u = len(group)
            if n_items_u >= 5:
                idx = np.zeros(n_items_u, dtype="bool")
                idx[np.random.choice(n_items_u, size=int(test_prop * n_items_u),
                                     replace=False).astype("int64")] = True
                tr_list.append(group[np.logical_not(idx)])
                te_list.append(group[idx])
            else:
                tr_list.append(group)
        data_tr = pd.concat(tr_list)
        data_te = pd.concat(te_list) if te_list else data.iloc[:0]  # (tiny inputs only)
        return data_tr, data_te

    vad_plays = raw_data.loc[raw_data["userId"].isin(vd_users)]
    n_vad = len(vad_plays)
    vad_plays = vad_plays.loc[vad_plays["movieId"].isin(unique_sid)]
    vad_plays_tr, vad_plays_te = split_train_test_proportion(vad_plays)
    test_plays = raw_data.loc[raw_data["userId"].isin(te_users)]
    n_test = len(test_plays)
    test_plays = test_plays.loc[test_plays["movieId"].isin(unique_sid)]
    test_plays_tr, test_plays_te = split_train_test_proportion(test_plays)
    return {
        "tr_users": np.asarray(tr_users),
        "vd_users": np.asarray(vd_users),
        "te_users": np.asarray(te_users),
        "unique_sid": np.asarray(unique_sid),
        "train": train_plays,
        "validation": (vad_plays_tr, vad_plays_te),
        "test": (test_plays_tr, test_plays_te),
        "dropped": n_vad - len(vad_plays) + n_test - len(test_plays),
    }


def plays_pairs(plays: pd.DataFrame) -> set[tuple]:
    return set(zip(plays["userId"].tolist(), plays["movieId"].tolist(), strict=True))


def matrix_pairs(ds: Dataset, m: sp.csr_matrix, users: np.ndarray) -> set[tuple]:
    rows, cols = m.nonzero()
    return set(zip(ds.user_ids[users[rows]].tolist(), ds.item_ids[cols].tolist(), strict=True))


def ours(raw: pd.DataFrame, n_heldout_users: int, min_uc: int = 5, min_sc: int = 0) -> Dataset:
    df = raw.rename(columns={"userId": "user", "movieId": "item", "rating": "value"})
    df = preprocess(df, threshold=3.5, min_item_users=min_sc, min_user_items=min_uc)
    return strong_generalization(df, n_heldout_users)


def assert_matches_notebook(raw: pd.DataFrame, n_heldout_users: int, min_sc: int = 0) -> None:
    with global_numpy_rng():
        ref = liang_notebook(raw, n_heldout_users, min_sc=min_sc)
    ds = ours(raw, n_heldout_users, min_sc=min_sc)
    # same users in each part, in the same (permuted) order
    np.testing.assert_array_equal(ds.user_ids[ds.train_users], ref["tr_users"])
    np.testing.assert_array_equal(ds.user_ids[ds.validation.users], ref["vd_users"])
    np.testing.assert_array_equal(ds.user_ids[ds.test.users], ref["te_users"])
    # same item vocabulary in the same order (show2id)
    np.testing.assert_array_equal(ds.item_ids, ref["unique_sid"])
    assert matrix_pairs(ds, ds.train, ds.train_users) == plays_pairs(ref["train"])
    assert ds.train.nnz == len(ref["train"])
    for name in ("validation", "test"):
        part: Part = ds.part(name)
        ref_tr, ref_te = ref[name]
        assert matrix_pairs(ds, part.fold_in, part.users) == plays_pairs(ref_tr), name
        assert matrix_pairs(ds, part.holdout, part.users) == plays_pairs(ref_te), name
        assert part.fold_in.nnz == len(ref_tr) and part.holdout.nnz == len(ref_te)
    assert ds.manifest["drops"]["unknown_items"] == ref["dropped"]


def ml_frame(seed: int, n_users: int, n_items: int = 2000) -> pd.DataFrame:
    df = make_ratings(n_users, n_items, seed=seed, max_items=150, mean_items=30)
    return df.rename(columns={"user": "userId", "item": "movieId", "value": "rating"})


@pytest.mark.parametrize(
    ("seed", "n_users", "n_heldout", "min_sc"),
    [(0, 4000, 300, 0), (1, 3000, 600, 0), (2, 3000, 250, 3)],
)
def test_strong_matches_reference_notebook(seed: int, n_users: int, n_heldout: int, min_sc: int) -> None:
    raw = ml_frame(seed, n_users)
    assert_matches_notebook(raw, n_heldout, min_sc=min_sc)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), n_users=st.integers(40, 400), share=st.floats(0.01, 0.3))
def test_strong_matches_reference_notebook_small(seed: int, n_users: int, share: float) -> None:
    raw = ml_frame(seed, n_users, n_items=300)
    n_kept = (raw[raw["rating"] > 3.5]["userId"].value_counts() >= 5).sum()
    n_heldout = max(1, int(share * n_kept))
    if n_kept <= 2 * n_heldout:
        return
    assert_matches_notebook(raw, n_heldout)


# ============================================================ strong: the paper's rules
@pytest.fixture
def strong_df() -> pd.DataFrame:
    df = make_ratings(1500, 8000, seed=5, max_items=120, mean_items=25).assign(value=1.0)
    counts = df["user"].map(df["user"].value_counts())
    return df[counts.to_numpy() >= 5].reset_index(drop=True)


def test_strong_users_disjoint_and_covering(strong_df: pd.DataFrame) -> None:
    ds = strong_generalization(strong_df, 200)
    all_users = np.concatenate([ds.train_users, ds.validation.users, ds.test.users])
    np.testing.assert_array_equal(np.sort(all_users), np.arange(ds.n_users))
    assert set(ds.user_ids) == set(strong_df["user"])
    assert len(ds.validation.users) == len(ds.test.users) == 200
    assert ds.train.shape[0] == ds.n_users - 400
    assert ds.protocol == "strong"


def test_strong_vocabulary_is_training_users_items(strong_df: pd.DataFrame) -> None:
    ds = strong_generalization(strong_df, 200)
    train_ids = set(ds.user_ids[ds.train_users])
    train_items = strong_df.loc[strong_df["user"].isin(train_ids), "item"]
    assert set(ds.item_ids) == set(train_items)
    assert len(ds.item_ids) == len(set(ds.item_ids))
    assert (np.diff(ds.train.tocsc().indptr) > 0).all()  # every item has a training user
    assert ds.train.nnz == len(train_items)


def test_strong_fold_in_and_holdout_per_user(strong_df: pd.DataFrame) -> None:
    ds = strong_generalization(strong_df, 200)
    vocab = set(ds.item_ids)
    by_user = strong_df.groupby("user")["item"].apply(set)
    n_dropped = 0
    sizes = []
    for name in ("validation", "test"):
        part = ds.part(name)
        for r, u in enumerate(part.users):
            history = by_user[ds.user_ids[u]]
            known = history & vocab
            n_dropped += len(history) - len(known)
            fold_in = set(ds.item_ids[part.fold_in[r].indices])
            held = set(ds.item_ids[part.holdout[r].indices])
            assert not fold_in & held
            assert fold_in | held == known
            n = len(known)
            assert len(held) == (int(0.2 * n) if n >= 5 else 0)
            sizes.append(n)
    assert ds.manifest["drops"]["unknown_items"] == n_dropped
    assert n_dropped > 0  # the data does exercise unknown items
    assert min(sizes) < 5  # ...and evaluation users left with fewer than 5 known items
    assert np.isin(ds.part("test").holdout.data, [1.0]).all()


def test_strong_test_prop(strong_df: pd.DataFrame) -> None:
    ds = strong_generalization(strong_df, 100, test_prop=0.5)
    part = ds.validation
    n = np.diff(part.fold_in.indptr) + np.diff(part.holdout.indptr)
    held = np.diff(part.holdout.indptr)
    np.testing.assert_array_equal(held, np.where(n >= 5, (0.5 * n).astype(int), 0))


def test_strong_string_ids() -> None:
    df = make_ratings(200, 100, seed=3, mean_items=20).assign(value=1.0)
    df["user"] = "u" + df["user"].astype(str)
    df["item"] = "i" + df["item"].astype(str)
    ds = strong_generalization(df, 20)
    assert set(ds.user_ids) == set(df["user"])
    assert all(isinstance(i, str) for i in ds.item_ids)


def test_strong_needs_more_users_than_twice_the_heldout(strong_df: pd.DataFrame) -> None:
    n_users = strong_df["user"].nunique()
    with pytest.raises(RecvaeError, match=rf"2 × n_heldout_users = {n_users}.*has {n_users}"):
        strong_generalization(strong_df, n_users // 2 if n_users % 2 == 0 else (n_users + 1) // 2)
    odd = strong_df[strong_df["user"].isin(strong_df["user"].unique()[: 2 * 50 + 1])]
    ds = strong_generalization(odd, 50)  # 2·n + 1 users: one training user
    assert ds.train.shape[0] == 1


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"n_heldout_users": 0}, "n_heldout_users must be positive"),
    ({"n_heldout_users": 10, "test_prop": 1.0}, r"test_prop must be in \(0, 1\)"),
])
def test_strong_bad_parameters(strong_df: pd.DataFrame, kwargs: dict, match: str) -> None:
    with pytest.raises(RecvaeError, match=match):
        strong_generalization(strong_df, **kwargs)


def test_strong_seed_determinism(strong_df: pd.DataFrame) -> None:
    a, b = strong_generalization(strong_df, 100), strong_generalization(strong_df, 100)
    c = strong_generalization(strong_df, 100, seed=1)
    np.testing.assert_array_equal(a.test.users, b.test.users)
    assert (a.test.holdout != b.test.holdout).nnz == 0
    assert not np.array_equal(a.test.users, c.test.users)
    assert c.manifest["split"]["seed"] == 1


# ============================================================ weak splits
def csr_equal(a: sp.csr_matrix, b: sp.csr_matrix) -> bool:
    return a.shape == b.shape and (a != b).nnz == 0


def check_weak(ds: Dataset, df: pd.DataFrame, is_test: np.ndarray) -> None:
    """Invariants shared by random_holdout, temporal and predefined, given the test-row mask."""
    assert ds.protocol == "weak"
    n = ds.n_users
    users = np.arange(n)
    for part in (ds.validation, ds.test):
        np.testing.assert_array_equal(part.users, users)
    np.testing.assert_array_equal(ds.train_users, users)
    # validation is carved from the training rows; its fold-in is the training matrix
    assert csr_equal(ds.validation.fold_in, ds.train)
    assert (ds.train.multiply(ds.validation.holdout)).nnz == 0
    # the test fold-in is the whole training history: train + validation targets
    assert csr_equal(ds.test.fold_in, ds.train + ds.validation.holdout)
    # vocabulary = the items of the training rows; test rows on other items dropped, counted
    train_rows, test_rows = df[~is_test], df[is_test]
    assert set(ds.item_ids) == set(train_rows["item"])
    unknown = ~test_rows["item"].isin(set(ds.item_ids))
    assert ds.manifest["drops"]["unknown_items"] == int(unknown.sum())
    known_test = test_rows[~unknown]
    assert matrix_pairs(ds, ds.test.holdout, ds.test.users) == set(
        zip(known_test["user"], known_test["item"], strict=True)
    )
    assert matrix_pairs(ds, ds.test.fold_in, ds.test.users) == set(
        zip(train_rows["user"], train_rows["item"], strict=True)
    )
    # every user with ≥ 5 training items has at least one validation target
    n_train_items = np.diff(ds.test.fold_in.indptr)
    n_val = np.diff(ds.validation.holdout.indptr)
    assert (n_val[n_train_items >= 5] >= 1).all()
    assert (n_val[n_train_items < 5] == 0).all()
    assert (n_train_items >= 5).any()


def test_random_holdout_invariants(positives: pd.DataFrame) -> None:
    ds = random_holdout(positives, test_prop=0.2, validation_prop=0.1)
    codes = pd.factorize(positives["user"], sort=True)[0]
    is_test = holdout_proportion(codes, 0.2, SEED)
    check_weak(ds, positives, is_test)
    n = positives.groupby("user").size().reindex(ds.user_ids).to_numpy()
    expected = np.where(n >= 5, (0.2 * n).astype(int), 0)
    held = np.diff(ds.test.holdout.indptr)
    assert (held <= expected).all()
    assert held.sum() + ds.manifest["drops"]["unknown_items"] == expected.sum()
    assert (held > 0).sum() > 0.9 * (n >= 5).sum()
    assert ds.test.holdout.multiply(ds.test.fold_in).nnz == 0  # targets are not in the history
    assert ds.manifest["split"]["method"] == "random"


def test_random_holdout_determinism(positives: pd.DataFrame) -> None:
    a, b = random_holdout(positives), random_holdout(positives)
    c = random_holdout(positives, seed=7)
    assert csr_equal(a.test.holdout, b.test.holdout)
    assert csr_equal(a.validation.holdout, b.validation.holdout)
    np.testing.assert_array_equal(a.item_ids, b.item_ids)
    assert not csr_equal(a.test.holdout, c.test.holdout)
    assert not csr_equal(a.validation.holdout, c.validation.holdout)


def test_random_holdout_drops_test_rows_on_unknown_items() -> None:
    rows = [(u, i) for u in range(3) for i in range(5)] + [(0, 99)]
    df = pd.DataFrame(rows, columns=["user", "item"]).assign(value=1.0)
    # a seed under which item 99 (user 0's only unique item) is drawn as a test row
    for seed in range(200):
        ds = random_holdout(df, test_prop=0.2, seed=seed)
        if 99 not in set(ds.item_ids):
            break
    else:
        pytest.fail("no seed draws item 99 as a test row")
    assert ds.manifest["drops"]["unknown_items"] == 1
    assert ds.test.holdout.nnz == 2  # users 1, 2: int(0.2·5) = 1 each; user 0's was item 99


@pytest.mark.parametrize("kwargs", [{"test_prop": 0.0}, {"validation_prop": 1.0}])
def test_random_holdout_bad_props(positives: pd.DataFrame, kwargs: dict) -> None:
    with pytest.raises(RecvaeError, match=r"must be in \(0, 1\)"):
        random_holdout(positives, **kwargs)


def test_temporal_leave_last(positives: pd.DataFrame) -> None:
    ds = temporal(positives, leave_last=2)
    ts = positives["timestamp"].to_numpy()
    rank = positives.assign(ts=ts).groupby("user")["ts"].rank(method="first", ascending=False)
    size = positives.groupby("user")["item"].transform("size")
    is_test = ((rank <= 2) & (size > 2)).to_numpy()
    check_weak(ds, positives, is_test)
    assert ds.manifest["split"]["leave_last"] == 2
    # each user's test targets are later than all of their training interactions
    first_test = positives[is_test].groupby("user")["timestamp"].min()
    last_train = positives[~is_test].groupby("user")["timestamp"].max()
    assert (first_test > last_train.reindex(first_test.index)).all()


def test_temporal_users_with_few_interactions_keep_them() -> None:
    df = pd.DataFrame(
        {"user": [1, 1, 2, 2, 2, 2], "item": [1, 3, 1, 2, 3, 4], "value": 1.0,
         "timestamp": [5, 1, 9, 3, 7, 1]}
    )
    ds = temporal(df, leave_last=2)
    u1, u2 = (list(ds.user_ids).index(u) for u in (1, 2))
    assert ds.test.holdout[u1].nnz == 0 and ds.test.fold_in[u1].nnz == 2
    assert set(ds.item_ids[ds.test.holdout[u2].indices]) == {1, 3}  # times 9 and 7
    assert set(ds.item_ids[ds.test.fold_in[u2].indices]) == {2, 4}


def test_temporal_cutoff(positives: pd.DataFrame) -> None:
    cutoff = float(np.quantile(positives["timestamp"], 0.8))
    ds = temporal(positives, leave_last=None, cutoff=cutoff)
    check_weak(ds, positives, (positives["timestamp"] >= cutoff).to_numpy())
    assert ds.manifest["split"]["cutoff"] == cutoff


def test_temporal_errors(positives: pd.DataFrame) -> None:
    with pytest.raises(RecvaeError, match="needs timestamps"):
        temporal(positives.drop(columns="timestamp"))
    with pytest.raises(RecvaeError, match="exactly one of split.leave_last or split.cutoff"):
        temporal(positives, leave_last=1, cutoff=1.0)
    with pytest.raises(RecvaeError, match="exactly one"):
        temporal(positives, leave_last=None, cutoff=None)
    with pytest.raises(RecvaeError, match="leave_last must be positive"):
        temporal(positives, leave_last=0)


def test_temporal_determinism(positives: pd.DataFrame) -> None:
    a, b = temporal(positives, seed=3), temporal(positives, seed=3)
    c = temporal(positives, seed=4)
    assert csr_equal(a.test.holdout, b.test.holdout)  # the test part does not depend on the seed
    assert csr_equal(a.test.holdout, c.test.holdout)
    assert csr_equal(a.validation.holdout, b.validation.holdout)
    assert not csr_equal(a.validation.holdout, c.validation.holdout)


def predefined_frame(positives: pd.DataFrame) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return positives.assign(part=np.where(rng.random(len(positives)) < 0.25, "test", "train"))


def test_predefined_invariants(positives: pd.DataFrame) -> None:
    df = predefined_frame(positives)
    ds = predefined(df)
    is_test = (df["part"] == "test").to_numpy()
    check_weak(ds, df, is_test)
    assert ds.manifest["drops"]["unknown_items"] > 0  # test-only items exist here
    assert ds.manifest["split"]["method"] == "predefined"


def test_predefined_item_in_both_parts_stays_in_both() -> None:
    """A pair listed in both the source's train and test parts stays in both: it is part of the
    test fold-in (masked) and a test target, as in LightGCN's own evaluation."""
    rows = [(1, i, "train") for i in range(6)] + [(1, 0, "test"), (1, 1, "test")]
    rows += [(2, i, "train") for i in range(2, 8)] + [(2, 0, "test")]
    df = pd.DataFrame(rows, columns=["user", "item", "part"]).assign(value=1.0)
    ds = predefined(df)
    both = ds.test.holdout.multiply(ds.test.fold_in)
    assert matrix_pairs(ds, both.tocsr(), ds.test.users) == {(1, 0), (1, 1)}
    assert matrix_pairs(ds, ds.test.holdout, ds.test.users) == {(1, 0), (1, 1), (2, 0)}


def test_predefined_errors(positives: pd.DataFrame) -> None:
    with pytest.raises(RecvaeError, match="needs a source with its own train/test parts"):
        predefined(positives)
    with pytest.raises(RecvaeError, match=r"expected parts 'train' and 'test', found \['train'\]"):
        predefined(positives.assign(part="train"))
    with pytest.raises(RecvaeError, match="found.*'valid'"):
        predefined(positives.assign(part=np.where(positives.index % 2, "test", "valid")))
    with pytest.raises(RecvaeError, match="no training interactions"):
        predefined(positives.assign(part="test"))


def test_predefined_determinism(positives: pd.DataFrame) -> None:
    df = predefined_frame(positives)
    a, b, c = predefined(df), predefined(df), predefined(df, seed=11)
    assert csr_equal(a.validation.holdout, b.validation.holdout)
    assert not csr_equal(a.validation.holdout, c.validation.holdout)
    assert csr_equal(a.test.holdout, c.test.holdout)
