"""Tests for recvae.data.preprocess: binarize, drop_duplicates, min-count filters, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recvae.data.preprocess import binarize, drop_duplicates, filter_min_counts, preprocess
from recvae.errors import RecvaeError


def frame(rows: list[tuple], columns: str = "user item value") -> pd.DataFrame:
    return pd.DataFrame(rows, columns=columns.split())


def pairs(df: pd.DataFrame) -> set[tuple]:
    return set(zip(df["user"], df["item"], strict=True))


# ------------------------------------------------------------------ binarize
def test_binarize_keeps_strictly_greater_than_threshold() -> None:
    df = frame([(1, 1, 3.0), (1, 2, 3.5), (1, 3, 4.0), (2, 1, 5.0), (2, 2, 0.5)])
    out = binarize(df, 3.5)
    assert pairs(out) == {(1, 3), (2, 1)}  # 3.5 itself is not a positive
    assert (out["value"] == 1.0).all()


def test_binarize_none_keeps_everything_as_ones() -> None:
    df = frame([(1, 1, 0.0), (1, 2, 17.0), (2, 1, -1.0)])
    out = binarize(df, None, allow_negative=True)
    assert len(out) == 3
    assert out["value"].tolist() == [1.0, 1.0, 1.0]
    assert df["value"].tolist() == [0.0, 17.0, -1.0]  # the input is not modified


def test_binarize_none_refuses_negative_values_unless_allowed() -> None:
    df = frame([(1, 1, 2.0), ("u7", 9, -0.5), (2, 1, -1.0)])
    with pytest.raises(RecvaeError, match=r"^log\.csv: 2 interaction\(s\) with a negative value "
                       r"\(first: user u7, item 9, value -0\.5\).*allow_negative"):
        binarize(df, None, source="log.csv")
    assert len(binarize(df, 1.0)) == 1  # with a threshold, negatives are simply not positives


def test_preprocess_counts_every_drop() -> None:
    rows = [(u, i, 5.0) for u in range(1, 4) for i in range(1, 4)]  # 3 users × 3 items
    rows += [(1, 1, 4.0), (1, 9, 5.0), (4, 1, 5.0), (2, 2, 1.0)]  # dup, rare item, lone user, low
    drops: dict[str, int] = {}
    out = preprocess(frame(rows), threshold=3.5, min_item_users=2, min_user_items=2, drops=drops)
    assert drops == {"below_threshold": 1, "duplicates": 1, "min_item_users": 1, "min_user_items": 1}
    assert len(out) == 9
    assert len(out) + sum(drops.values()) == len(rows)


def test_binarize_on_synthetic_ratings(ratings: pd.DataFrame) -> None:
    out = binarize(ratings, 3.5)
    assert len(out) == int((ratings["value"] > 3.5).sum())
    assert out.index.isin(ratings.index[ratings["value"] > 3.5]).all()


# ------------------------------------------------------------------ drop_duplicates
def test_drop_duplicates_keeps_latest_timestamp_in_data_order() -> None:
    df = frame(
        [(1, 10, 1.0, 500), (2, 20, 1.0, 100), (1, 10, 1.0, 900), (1, 10, 1.0, 200), (3, 30, 1.0, 1)],
        "user item value timestamp",
    )
    out = drop_duplicates(df)
    assert len(out) == 3
    assert out.loc[(out["user"] == 1) & (out["item"] == 10), "timestamp"].tolist() == [900]
    assert list(out.index) == sorted(out.index)  # original order kept


def test_drop_duplicates_keeps_row_order_whatever_the_index() -> None:
    # e.g. after pd.concat without ignore_index: labels repeat and are not sorted
    df = frame(
        [(1, 10, 1.0, 5), (2, 20, 1.0, 1), (1, 10, 1.0, 7), (3, 30, 1.0, 2), (2, 21, 1.0, 0)],
        "user item value timestamp",
    )
    df.index = [3, 1, 0, 1, 2]
    out = drop_duplicates(df)
    assert list(zip(out["user"], out["item"], out["timestamp"], strict=True)) == [
        (2, 20, 1), (1, 10, 7), (3, 30, 2), (2, 21, 0)
    ]


def test_drop_duplicates_without_timestamp_keeps_first() -> None:
    df = frame([(1, 10, 1.0), (1, 10, 2.0), (1, 11, 3.0)])
    out = drop_duplicates(df)
    assert out["value"].tolist() == [1.0, 3.0]


def test_drop_duplicates_keeps_same_pair_in_different_parts() -> None:
    df = pd.DataFrame(
        {"user": [1, 1, 1], "item": [5, 5, 5], "value": 1.0, "part": ["train", "test", "train"]}
    )
    out = drop_duplicates(df)
    assert sorted(out["part"]) == ["test", "train"]


# ------------------------------------------------------------------ filter_min_counts
def one_pass_case() -> pd.DataFrame:
    """Item 'x' has 2 users, but one of them (u4) has too few items: the paper's single pass
    (items first, then users) leaves 'x' with one user."""
    rows = [(u, i) for u in ("u1", "u2", "u3") for i in ("a", "b", "c")]
    rows += [("u1", "x"), ("u4", "x"), ("u4", "a")]
    return pd.DataFrame(rows, columns=["user", "item"]).assign(value=1.0)


def test_filter_items_first_then_users_in_one_pass() -> None:
    df = one_pass_case()
    out = filter_min_counts(df, min_item_users=2, min_user_items=3)
    # items: every item has ≥ 2 users, nothing dropped; users: u4 (2 items) dropped.
    assert set(out["user"]) == {"u1", "u2", "u3"}
    item_users = out.groupby("item")["user"].nunique()
    assert item_users["x"] == 1  # one pass: x is now below the minimum and is kept
    assert len(out) == 10


def test_filter_iterate_reaches_a_k_core() -> None:
    out = filter_min_counts(one_pass_case(), min_item_users=2, min_user_items=3, iterate=True)
    assert "x" not in set(out["item"])
    assert out.groupby("item")["user"].nunique().min() >= 2
    assert out.groupby("user")["item"].nunique().min() >= 3
    assert len(out) == 9


def test_filter_order_items_before_users() -> None:
    # Items first drops 'c' (1 user), then u2 has one item left and is dropped. Users first
    # would keep u2 (2 items), then drop only 'c', leaving (u2, b) in.
    rows = [("u1", "a"), ("u1", "b"), ("u3", "a"), ("u3", "b"), ("u2", "b"), ("u2", "c")]
    df = pd.DataFrame(rows, columns=["user", "item"]).assign(value=1.0)
    out = filter_min_counts(df, min_item_users=2, min_user_items=2)
    assert pairs(out) == {("u1", "a"), ("u1", "b"), ("u3", "a"), ("u3", "b")}


def test_filter_zero_minimums_keep_everything(ratings: pd.DataFrame) -> None:
    out = filter_min_counts(ratings, 0, 0)
    assert len(out) == len(ratings)


def test_filter_default_min_user_items_is_five(ratings: pd.DataFrame) -> None:
    out = filter_min_counts(ratings)
    counts = ratings["user"].value_counts()
    assert set(out["user"]) == set(counts.index[counts >= 5])
    assert len(out) == int(counts[counts >= 5].sum())


@pytest.mark.parametrize("kwargs", [{"min_item_users": -1}, {"min_user_items": -2}])
def test_filter_negative_counts_raise(kwargs: dict) -> None:
    with pytest.raises(RecvaeError, match=r"≥ 0.*-[12]"):
        filter_min_counts(one_pass_case(), **kwargs)


# ------------------------------------------------------------------ preprocess
def test_preprocess_chains_the_three_steps(ratings: pd.DataFrame) -> None:
    dup = pd.concat([ratings, ratings.iloc[:50].assign(timestamp=0)], ignore_index=True)
    out = preprocess(dup, threshold=3.5, min_item_users=0, min_user_items=5)
    pos = ratings[ratings["value"] > 3.5]
    counts = pos["user"].value_counts()
    expected = pos[pos["user"].isin(counts.index[counts >= 5])]
    assert pairs(out) == pairs(expected)
    assert len(out) == len(expected)  # duplicates removed
    # the later timestamp of each duplicated pair is the one kept
    merged = out.merge(expected, on=["user", "item"], suffixes=("", "_orig"))
    assert (merged["timestamp"] == merged["timestamp_orig"]).all()
    assert np.all(out["value"].to_numpy() == 1.0)


def test_preprocess_empty_after_filtering_names_the_thresholds(ratings: pd.DataFrame) -> None:
    with pytest.raises(RecvaeError, match=r"ratings\.csv: no interactions left.*threshold=10.*"
                       r"min_item_users=0.*min_user_items=5"):
        preprocess(ratings, threshold=10, source="ratings.csv")


def test_preprocess_empty_after_min_counts(ratings: pd.DataFrame) -> None:
    with pytest.raises(RecvaeError, match=r"min_user_items=1000"):
        preprocess(ratings, threshold=None, min_user_items=1000)


def test_preprocess_empty_input() -> None:
    with pytest.raises(RecvaeError, match="no interactions"):
        preprocess(frame([]), source="x.csv")
