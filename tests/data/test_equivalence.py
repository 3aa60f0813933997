"""Preprocessing and every split, checked against expectations derived apart from the code.

Until this file was rewritten, ``tests/data/legacy_pipeline.py`` kept main's DataFrame pipeline
of commit 339dab9 as an oracle, and these tests compared the compact pipeline with it. That copy
is gone; what it guarded is checked three ways, each test saying which:

1. **Independent oracles**: a few lines of pandas and ``RandomState`` per step, written from
   the protocol as the README states it ("The protocol") and from the reference notebook's
   procedure, not from ``recvae.data``: the rows preprocessing keeps and its drop counts, the
   (user, item) pairs of every part of every split (so nothing is lost or counted twice, and
   unknown items are counted), the orders of users and items, the seen pairs and dropped users.
   They run on messy logs (duplicates, tied timestamps, text ids, parts) with chunks and user
   blocks shrunk to a few rows, so every pass crosses many chunk and block boundaries.
2. **Hand-checkable examples**: logs of a few rows whose datasets are written out, one per
   split method, with the reasoning in comments.
3. **Pinned digests** (``Dataset.digest()``, first 16 hex digits) and drop counts of the same
   messy logs: computed by the frozen DataFrame pipeline (legacy_pipeline.py, deleted with this
   rewrite) just before it went, when the compact pipeline gave the same digests bit for bit.
   They pin today's output; they were not re-derived. A deliberate change to a split or to
   ``Dataset.digest`` updates them and says why.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import make_ratings

from recvae.data import interactions as interactions_module
from recvae.data import preprocess as dataframe_preprocess
from recvae.data.dataset import Dataset
from recvae.data.ingest import build_dataset, ingest
from recvae.data.interactions import Interactions, SeenBuilder
from recvae.data.interactions import keys_to_csr as _keys_to_csr
from recvae.data.sources import read_source
from recvae.data.spec import DataConfig, PreprocessConfig, SplitConfig
from recvae.data.split import _csr
from recvae.errors import RecvaeError


@pytest.fixture(autouse=True)
def tiny_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(interactions_module, "CHUNK", 97)
    monkeypatch.setattr(interactions_module, "BLOCK_ROWS", 300)


def messy_log(seed: int, *, text_ids: bool = False, parts: bool = False) -> pd.DataFrame:
    """Synthetic ratings plus repeated (user, item) pairs, some with tied timestamps."""
    rng = np.random.default_rng(seed)
    df = make_ratings(400, 300, seed=seed, max_items=60, mean_items=14)
    again = df.sample(frac=0.08, random_state=seed)
    again = again.assign(
        value=rng.choice(np.arange(1, 11) / 2, size=len(again)),
        timestamp=np.where(rng.random(len(again)) < 0.3, again["timestamp"],
                           rng.integers(1_000_000_000, 1_100_000_000, size=len(again))),
    )
    df = pd.concat([df, again]).sample(frac=1.0, random_state=seed + 1).reset_index(drop=True)
    df["timestamp"] = df["timestamp"] // 1000 * 1000  # more ties
    if text_ids:
        df["user"] = ("u" + df["user"].astype(str)).astype(object)
        df["item"] = df["item"].map(lambda i: f"é{i:05d}").astype(object)
    if parts:
        df["part"] = np.where(rng.random(len(df)) < 0.25, "test", "train")
    return df


def build(df: pd.DataFrame, threshold: float | None, pp: dict, split: SplitConfig) -> Dataset:
    """What ingest builds from ``df``: the log read into Interactions, then read again for the
    seen pairs."""
    allow = pp.get("allow_negative", False)
    return build_dataset(
        lambda: Interactions.from_frame(df, threshold=threshold, allow_negative=allow),
        lambda users, items, rows: SeenBuilder.from_frame(df, users, items),
        PreprocessConfig(threshold=threshold, **pp),
        split,
    )


# =========================================================================== the oracles
def oracle_preprocess(
    df: pd.DataFrame, threshold: float | None, min_item_users: int = 0, min_user_items: int = 5,
    iterate: bool = False,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The README's steps 1-2 in plain pandas: positives are ``value > threshold`` (every row for
    None); one row per (user, item[, part]), the latest kept (the last in log order among equal
    times; without times the first); items with fewer than ``min_item_users`` rows out, then
    users with fewer than ``min_user_items`` (repeated until both hold with ``iterate``).
    Returns the kept rows in log order and the rows each step dropped."""
    drops = dict.fromkeys(("below_threshold", "duplicates", "min_item_users", "min_user_items"), 0)
    rows = df if threshold is None else df[df["value"] > threshold]
    drops["below_threshold"] = len(df) - len(rows)
    key = ["user", "item"] + (["part"] if "part" in df.columns else [])
    if "timestamp" in df.columns:
        latest = rows.sort_values("timestamp", kind="stable").drop_duplicates(key, keep="last")
    else:
        latest = rows.drop_duplicates(key, keep="first")
    drops["duplicates"] = len(rows) - len(latest)
    rows = rows[rows.index.isin(latest.index)]
    while True:
        before = len(rows)
        for col, minimum in (("item", min_item_users), ("user", min_user_items)):
            if minimum:
                kept = rows[rows.groupby(col)[col].transform("size") >= minimum]
                drops[f"min_{col}_{'users' if col == 'item' else 'items'}"] += len(rows) - len(kept)
                rows = kept
        if not iterate or len(rows) == before:
            return rows, drops


def pairs(rows: pd.DataFrame) -> set:
    return set(zip(rows["user"], rows["item"], strict=True))


def per_user_draw(
    rows: pd.DataFrame, prop: float, rng: np.random.RandomState, min_holdout: int = 0
) -> pd.Index:
    """The reference notebook's ``split_train_test_proportion``: users in sorted id order, each
    with ≥ 5 rows gets ``max(min_holdout, int(prop·n))`` of its rows (log order) drawn by
    ``rng.choice(n, size, replace=False)``; fewer rows draw nothing. The drawn rows' index."""
    drawn = []
    for _, g in rows.groupby("user", sort=True):  # groups keep the log order
        if len(g) >= 5:
            drawn.append(g.index[rng.choice(len(g), max(min_holdout, int(prop * len(g))),
                                            replace=False)])
    return pd.Index(np.concatenate(drawn) if drawn else [], dtype=rows.index.dtype)


def oracle_split(rows: pd.DataFrame, s: SplitConfig) -> tuple[dict[str, set], int, list, list]:
    """(user, item) pairs of each part, unknown-item drops, user ids and item ids in order, from
    the README's steps 3-4 and the reference notebook (``RandomState(seed).permutation`` over the
    sorted users; a fresh ``RandomState(seed)`` per evaluation part; items of training users in
    order of first appearance). Weak splits: test rows by the method, then 10 % of each user's
    other rows (at least one; users with ≥ 5) drawn for validation with ``RandomState(seed)``
    (``seed + 1`` for random), items sorted; test rows on items no other row has are dropped."""
    users = np.sort(rows["user"].unique())
    if s.method == "strong":
        perm = np.random.RandomState(s.seed).permutation(len(users))
        n_train = len(users) - 2 * s.n_heldout_users
        train = rows[rows["user"].isin(users[perm[:n_train]])]
        item_ids = list(pd.unique(train["item"]))
        out, unknown = {"train": pairs(train)}, 0
        for k, name in enumerate(("validation", "test")):
            lo = n_train + k * s.n_heldout_users
            part = rows[rows["user"].isin(users[perm[lo : lo + s.n_heldout_users]])]
            known = part[part["item"].isin(item_ids)]
            unknown += len(part) - len(known)
            held = per_user_draw(known, s.test_prop, np.random.RandomState(s.seed))
            out[f"{name}.fold_in"] = pairs(known.drop(held))
            out[f"{name}.holdout"] = pairs(known.loc[held])
        return out, unknown, list(users), item_ids
    if s.method == "random":
        test = per_user_draw(rows, s.test_prop, np.random.RandomState(s.seed))
        val_seed = s.seed + 1
    else:
        val_seed = s.seed
        if s.method == "predefined":
            is_test = rows["part"] == "test"
        elif s.cutoff is not None:
            is_test = rows["timestamp"] >= s.cutoff
        else:  # the last leave_last by time, equal times in log order, of users with more
            order = rows.assign(at=np.arange(len(rows))).sort_values(["timestamp", "at"])
            from_end = order.groupby("user").cumcount(ascending=False)
            n = order.groupby("user")["user"].transform("size")
            is_test = ((from_end < s.leave_last) & (n > s.leave_last)).reindex(rows.index)
        test = rows.index[is_test.to_numpy()]
    others = rows.drop(test)
    val = per_user_draw(others, s.validation_prop, np.random.RandomState(val_seed), min_holdout=1)
    item_ids = sorted(set(others["item"]))
    known = rows.loc[test][rows.loc[test, "item"].isin(item_ids)]
    out = {"train": pairs(others.drop(val)), "validation.holdout": pairs(others.loc[val]),
           "test.holdout": pairs(known), "test.fold_in": pairs(others)}
    return out, len(test) - len(known), list(users), item_ids


def dataset_pairs(ds: Dataset) -> dict[str, set]:
    """The (user id, item id) pairs of each part of ``ds``."""
    def of(m: sp.csr_matrix, users: np.ndarray) -> set:
        coo = m.tocoo()
        return set(zip(ds.user_ids[np.asarray(users)[coo.row]], ds.item_ids[coo.col], strict=True))

    out = {"train": of(ds.train, ds.train_users)}
    for name in ("validation", "test"):
        part = ds.part(name)
        out[f"{name}.fold_in"], out[f"{name}.holdout"] = of(part.fold_in, part.users), of(
            part.holdout, part.users)
    return out


def assert_as_the_oracles_say(
    ds: Dataset, df: pd.DataFrame, threshold: float | None, pp: dict, s: SplitConfig
) -> None:
    """Every part, order, count and the seen pairs of ``ds`` as the oracles derive them."""
    filters = {k: v for k, v in pp.items() if k != "allow_negative"}
    rows, drops = oracle_preprocess(df, threshold, **filters)
    expected, unknown, user_ids, item_ids = oracle_split(rows, s)
    got = dataset_pairs(ds)
    if s.method != "strong":  # weak: validation folds in the training rows
        assert got.pop("validation.fold_in") == got["train"]
    assert got == expected
    if "part" not in df.columns:  # every row in one matrix once (a pair in two parts merges)
        counted = ["train", "validation.holdout", "test.holdout"] + (
            ["validation.fold_in", "test.fold_in"] if s.method == "strong" else [])
        assert sum(len(got[k]) for k in counted) + unknown == len(rows)
    assert ds.user_ids.tolist() == user_ids and ds.item_ids.tolist() == item_ids
    assert ds.manifest["drops"] == {**drops, "unknown_items": unknown}
    raw_users = sorted(set(df["user"]))
    dropped = sorted(set(raw_users) - set(user_ids))
    assert ds.dropped_user_ids.tolist() == dropped
    assert ds.manifest["raw_interactions"] == len(df)
    assert ds.manifest["positive_interactions"] == len(rows)
    # seen: every pair of the raw log, whatever its value, rows the dataset's users then the
    # dropped ones, columns the dataset's items
    row_of = {u: r for r, u in enumerate(user_ids + dropped)}
    col_of = {i: c for c, i in enumerate(item_ids)}
    raw = {(row_of[u], col_of[i]) for u, i in zip(df["user"], df["item"], strict=True) if i in col_of}
    seen = ds.seen.tocoo()
    assert set(zip(seen.row.tolist(), seen.col.tolist(), strict=True)) == raw and seen.nnz == len(raw)


# =========================================================================== messy logs
SPLITS = [
    SplitConfig(method="strong", n_heldout_users=40),
    SplitConfig(method="strong", n_heldout_users=25, test_prop=0.3, seed=7),
    SplitConfig(method="random"),
    SplitConfig(method="random", test_prop=0.3, validation_prop=0.2, seed=3),
    SplitConfig(method="temporal", leave_last=1),
    SplitConfig(method="temporal", leave_last=3),
    SplitConfig(method="temporal", leave_last=None, cutoff=1.06e9),
]
SPLIT_IDS = ["strong", "strong-0.3-7", "random", "random-0.3-0.2-3", "temporal-1", "temporal-3",
             "cutoff"]
PREPROCESS = {
    "paper": (3.5, {"min_item_users": 0, "min_user_items": 5}),
    "min-sc": (None, {"min_item_users": 3, "min_user_items": 5}),
    "k-core": (2.0, {"min_item_users": 4, "min_user_items": 3, "iterate": True}),
    "no-filter": (3.5, {"min_item_users": 0, "min_user_items": 0}),
}
# Pinned: Dataset.digest()[:16] of build(messy_log(7), *PREPROCESS[prep], split), and the
# drops, from the frozen DataFrame pipeline (see the module docstring).
DIGESTS = {
    ("paper", "strong"): "b55e24146209f154", ("paper", "strong-0.3-7"): "538d0d119d42e1e8",
    ("paper", "random"): "570f356e5ca0a05d", ("paper", "random-0.3-0.2-3"): "c8e00297ab0b1cab",
    ("paper", "temporal-1"): "f67891b07cfec8fd", ("paper", "temporal-3"): "c0c7befbb44adcdd",
    ("paper", "cutoff"): "44227fc926086ed2",
    ("min-sc", "strong"): "5eb5b86ec0597839", ("min-sc", "strong-0.3-7"): "8729f2e0ddeb8820",
    ("min-sc", "random"): "9eedd8394ef7de0d", ("min-sc", "random-0.3-0.2-3"): "cc2756dadf0af288",
    ("min-sc", "temporal-1"): "ada3443ab6076517", ("min-sc", "temporal-3"): "ce7d6ef7452ec27f",
    ("min-sc", "cutoff"): "4862a2d161af1550",
    ("k-core", "strong"): "4417e0abe9202e20", ("k-core", "strong-0.3-7"): "c054ddb2b0f0b707",
    ("k-core", "random"): "e725a46b55333d28", ("k-core", "random-0.3-0.2-3"): "9b1d62543772d529",
    ("k-core", "temporal-1"): "e95c03fcbaf3b4fc", ("k-core", "temporal-3"): "22124fa28a466683",
    ("k-core", "cutoff"): "a3723caaec0badd3",
    ("no-filter", "strong"): "c7a4d03b78f8381b", ("no-filter", "strong-0.3-7"): "5bf2482087dab1d9",
    ("no-filter", "random"): "201bff380f4f4d01", ("no-filter", "random-0.3-0.2-3"): "5d8c6678662e153c",
    ("no-filter", "temporal-1"): "4e16078b3159fd8e", ("no-filter", "temporal-3"): "777f82fab576f6ea",
    ("no-filter", "cutoff"): "6c2cd634663da87e",
}
DROPS = {  # below_threshold, duplicates, min_item_users, min_user_items (before the split)
    "paper": (4542, 41, 0, 434), "min-sc": (0, 482, 8, 213), "k-core": (2633, 178, 133, 127),
    "no-filter": (4542, 41, 0, 0),
}
UNKNOWN_ITEMS = {  # the split's drops, in SPLITS order
    "paper": (50, 30, 13, 16, 7, 31, 48), "min-sc": (0, 0, 0, 0, 0, 0, 7),
    "k-core": (0, 0, 0, 4, 0, 0, 4), "no-filter": (20, 5, 9, 10, 8, 28, 36),
}


@pytest.mark.parametrize("split", SPLITS, ids=SPLIT_IDS)
@pytest.mark.parametrize("prep", list(PREPROCESS))
def test_every_split_and_preprocessing_as_derived(split: SplitConfig, prep: str) -> None:
    """Oracles (1) and pins (3), on a log with duplicates and tied timestamps."""
    threshold, pp = PREPROCESS[prep]
    df = messy_log(len(SPLITS))
    ds = build(df, threshold, pp, split)
    assert_as_the_oracles_say(ds, df, threshold, pp, split)
    k = SPLIT_IDS[SPLITS.index(split)]
    assert ds.digest()[:16] == DIGESTS[prep, k]
    reasons = ("below_threshold", "duplicates", "min_item_users", "min_user_items")
    assert ds.manifest["drops"] == {**dict(zip(reasons, DROPS[prep], strict=True)),
                                    "unknown_items": UNKNOWN_ITEMS[prep][SPLITS.index(split)]}
    assert sum(ds.manifest["drops"].values()) > 0  # something to count


TEXT_DIGESTS = ("1f192e520679c01f", "c3b4eaf8d59b7925", "636e8d5c9dd758b7", "12afe824a50eebce",
                "d53ba14d2d4dd6a1", "718000baa5283c53", "218d20a8d2660983")


@pytest.mark.parametrize("split", SPLITS, ids=SPLIT_IDS)
def test_every_split_with_text_ids(split: SplitConfig) -> None:
    """Oracles (1) and pins (3) with text user and item ids (non-ASCII items)."""
    threshold, pp = PREPROCESS["paper"]
    df = messy_log(3, text_ids=True)
    ds = build(df, threshold, pp, split)
    assert ds.user_ids.dtype == object
    assert_as_the_oracles_say(ds, df, threshold, pp, split)
    assert ds.digest()[:16] == TEXT_DIGESTS[SPLITS.index(split)]


@pytest.mark.parametrize(
    "split, digest",
    [(SplitConfig(method="predefined"), "fa0938e344c17135"),
     (SplitConfig(method="predefined", validation_prop=0.3, seed=5), "9a13ac69e733b702"),
     (SplitConfig(method="strong", n_heldout_users=30), "3702ce0b85737eea")],
    ids=["predefined", "predefined-seed", "strong"],
)
def test_a_log_with_parts(split: SplitConfig, digest: str) -> None:
    """Oracles (1) and pins (3) on a log with a train/test ``part`` column and no times. The
    same pair in both parts survives deduplication twice; matrices merge it."""
    df = messy_log(11, parts=True).drop(columns="timestamp")
    pp = {"min_item_users": 0, "min_user_items": 5}
    ds = build(df, None, pp, split)
    assert_as_the_oracles_say(ds, df, None, pp, split)
    assert ds.digest()[:16] == digest


def test_dataframe_functions_keep_the_rows_the_oracle_keeps() -> None:
    """Oracle (1): the DataFrame functions of recvae.data.preprocess keep, in log order, the rows
    that plain pandas keeps, and count the same drops."""
    df = messy_log(12)
    new = dataframe_preprocess
    no_times = df.drop(columns="timestamp")
    pd.testing.assert_frame_equal(new.drop_duplicates(df), oracle_preprocess(df, None, 0, 0)[0])
    pd.testing.assert_frame_equal(new.drop_duplicates(no_times),
                                  oracle_preprocess(no_times, None, 0, 0)[0])
    once = new.drop_duplicates(df)
    for kwargs in ({"min_item_users": 3}, {"min_user_items": 4, "iterate": True}):
        pd.testing.assert_frame_equal(new.filter_min_counts(once, **kwargs),
                                      oracle_preprocess(once, None, **kwargs)[0])
    drops: dict[str, int] = {}
    rows, expected = oracle_preprocess(df, 2.5, min_item_users=2)
    pd.testing.assert_frame_equal(
        new.preprocess(df, threshold=2.5, min_item_users=2, drops=drops), rows.assign(value=1.0)
    )
    assert drops == expected and all(expected.values())


def test_negative_values_refused_then_allowed() -> None:
    """The message names the count and the first negative row in log order (read off the log);
    allowed, they are positives like any other (oracle (1)); the dataset is pinned (3)."""
    df = messy_log(5, text_ids=True)
    df.loc[df.index[[40, 7, 300]], "value"] = [-1.5, -2.0, -0.5]  # the first in log order: row 7
    with pytest.raises(RecvaeError, match=r"3 interaction\(s\) with a negative value") as e:
        build(df, None, {"min_user_items": 5}, SPLITS[0])
    assert f"first: user {df['user'].iloc[7]}, item {df['item'].iloc[7]}, value -2)" in str(e.value)
    allowed = {"min_user_items": 5, "allow_negative": True}
    ds = build(df, None, allowed, SPLITS[0])
    assert_as_the_oracles_say(ds, df, None, allowed, SPLITS[0])
    assert ds.digest()[:16] == "037a1d5f55ce2eb2"


@pytest.mark.parametrize(
    "threshold, split, digest",
    [(3.5, SplitConfig(method="strong", n_heldout_users=30), "eb2405b7f9aeb3fd"),
     (None, SplitConfig(method="temporal", leave_last=2), "281ea7093e384d27"),
     (2.0, SplitConfig(method="random", seed=4), "cad8a4c222f10ae5")],
    ids=["strong", "temporal", "random"],
)
def test_table_ingest_from_parts_as_derived(
    tmp_path: Path, threshold: float | None, split: SplitConfig, digest: str
) -> None:
    """The streamed table source, read twice (positives, then the seen pairs) from Parquet parts,
    builds the dataset that the in-memory path builds from the frame the source's reader gives
    for the same rows; the oracles (1) agree, and the digest is pinned (3). User ids are text
    that is all canonical integers (int64 after reading), item ids text."""
    df = messy_log(21)
    df["user"] = df["user"].astype(str)
    df["item"] = df["item"].map(lambda i: f"i{i}")
    folder = tmp_path / "parts"
    folder.mkdir()
    for k, rows in enumerate(np.array_split(np.arange(len(df)), 3)):  # cuts inside users
        df.iloc[rows].to_parquet(folder / f"part-{k:05d}.parquet", index=False, row_group_size=150)
    (folder / "_SUCCESS").touch()
    whole = tmp_path / "whole.parquet"
    df.to_parquet(whole, index=False)
    options = {"value_col": "value", "timestamp_col": "timestamp"}
    pp = {"min_item_users": 2, "min_user_items": 5}
    frame = read_source("table", whole, **options)
    in_memory = build(frame, threshold, pp, split)
    assert in_memory.user_ids.dtype == np.int64 and in_memory.item_ids.dtype == object
    assert len(in_memory.dropped_user_ids) > 0
    assert_as_the_oracles_say(in_memory, frame, threshold, pp, split)
    assert in_memory.digest()[:16] == digest
    data = DataConfig(
        source="table", path=str(folder), options=options, out=str(tmp_path / "ds"),
        preprocess=PreprocessConfig(threshold=threshold, **pp), split=split,
    )
    streamed, _ = ingest(data)
    assert streamed.digest() == in_memory.digest()
    assert {k: streamed.manifest[k] for k in in_memory.manifest if k != "timings"} == {
        k: v for k, v in in_memory.manifest.items() if k != "timings"}
    assert Dataset.load(tmp_path / "ds").digest() == streamed.digest()


# =========================================================================== by hand
def dense(m: sp.csr_matrix) -> list[list[int]]:
    return m.toarray().astype(int).tolist()


# user, item, timestamp: user 1 rated items 1, 3, 2 (in time order 10, 20, 30); user 2 items 1
# and 4 at the same time; user 3 one item; user 4 items 2 then 5.
SMALL = pd.DataFrame(
    [(1, 1, 10), (1, 2, 30), (1, 3, 20), (2, 1, 5), (2, 4, 5), (3, 3, 1), (4, 2, 1), (4, 5, 2)],
    columns=["user", "item", "timestamp"],
).assign(value=1.0)
KEEP_ALL = {"min_item_users": 0, "min_user_items": 0}
NO_DROPS = {"below_threshold": 0, "duplicates": 0, "min_item_users": 0, "min_user_items": 0}


def test_by_hand_temporal_leave_last() -> None:
    """Hand-checked (2). The last interaction by time is a test row for users with more than one:
    user 1 item 2 (t=30), user 2 item 4 (tied at t=5: the later in the log), user 4 item 5; user
    3 has one and keeps it. Training rows then hold items 1, 2, 3 only, so the test rows on items
    4 and 5 are dropped (2 unknown items). No user has the 5 training rows a validation target
    needs."""
    ds = build(SMALL, None, KEEP_ALL, SplitConfig(method="temporal", leave_last=1))
    assert ds.user_ids.tolist() == [1, 2, 3, 4] and ds.item_ids.tolist() == [1, 2, 3]
    assert dense(ds.train) == [[1, 0, 1], [1, 0, 0], [0, 0, 1], [0, 1, 0]]
    assert dense(ds.test.holdout) == [[0, 1, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert dense(ds.test.fold_in) == dense(ds.train) and ds.validation.holdout.nnz == 0
    assert ds.manifest["drops"] == {**NO_DROPS, "unknown_items": 2}


def test_by_hand_temporal_cutoff() -> None:
    """Hand-checked (2). Rows at or after t=20 are test rows: user 1's items 3 (t=20) and 2
    (t=30). Every item has a training row (item 2: user 4's), so nothing is dropped."""
    ds = build(SMALL, None, KEEP_ALL, SplitConfig(method="temporal", leave_last=None, cutoff=20))
    assert ds.item_ids.tolist() == [1, 2, 3, 4, 5]
    assert dense(ds.train) == [[1, 0, 0, 0, 0], [1, 0, 0, 1, 0], [0, 0, 1, 0, 0], [0, 1, 0, 0, 1]]
    assert dense(ds.test.holdout)[0] == [0, 1, 1, 0, 0] and ds.test.holdout.nnz == 2
    assert ds.manifest["drops"] == {**NO_DROPS, "unknown_items": 0}


def test_by_hand_predefined() -> None:
    """Hand-checked (2). The part column decides: user 1's item 2 and user 2's item 1 are test
    rows; both items have training rows (users 4 and 1), so both stay."""
    df = SMALL.assign(part=["train", "test", "train", "test", "train", "train", "train", "train"])
    ds = build(df.drop(columns="timestamp"), None, KEEP_ALL, SplitConfig(method="predefined"))
    assert ds.item_ids.tolist() == [1, 2, 3, 4, 5]
    assert dense(ds.train) == [[1, 0, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 1, 0, 0], [0, 1, 0, 0, 1]]
    assert dense(ds.test.holdout) == [[0, 1, 0, 0, 0], [1, 0, 0, 0, 0], [0] * 5, [0] * 5]
    assert ds.manifest["drops"] == {**NO_DROPS, "unknown_items": 0}


def test_by_hand_preprocessing() -> None:
    """Hand-checked (2), the paper's settings (positives > 3.5, users with ≥ 5 items). Below the
    threshold: (1, 11) at 2 and (3, 10) at 1, so user 3 has no positive. Duplicates: user 1's
    older (1, 10) and, of the two (2, 14) at the same time, the earlier in the log. User 1 is
    left with 4 items (10, 12, 13, 14) and is dropped; user 2 keeps its 5."""
    rows = [(1, 10, 5, 100), (1, 10, 4, 200), (1, 11, 2, 100), (1, 12, 4, 100), (1, 13, 4, 100),
            (1, 14, 4, 100), (2, 10, 4, 1), (2, 11, 4, 1), (2, 12, 4, 1), (2, 13, 4, 1),
            (2, 14, 4, 1), (2, 14, 5, 1), (3, 10, 1, 1)]
    df = pd.DataFrame(rows, columns=["user", "item", "value", "timestamp"])
    drops: dict[str, int] = {}
    kept = dataframe_preprocess.preprocess(df, threshold=3.5, drops=drops)
    assert kept.index.tolist() == [6, 7, 8, 9, 11]
    assert drops == {"below_threshold": 2, "duplicates": 2, "min_item_users": 0, "min_user_items": 4}


def test_by_hand_strong() -> None:
    """Derived (2) by the reference notebook's steps on 5 users, 1 held out per part. Users 1..5
    each rated items 1..5 and one item of their own (10 + u). RandomState(98765).permutation(5)
    orders the users: the first 3 train, then 1 validation user, then 1 test user. The items
    are the training users' in order of first appearance (the log lists users in id order):
    1..5, then their own items. An evaluation user's own item is unknown (2 drops); its 5
    known items give int(0.2·5) = 1 target, the first draw of a fresh RandomState(98765),
    ``choice(5, 1, replace=False)`` = ``permutation(5)[:1]``."""
    df = pd.DataFrame(
        [(u, i) for u in range(1, 6) for i in [1, 2, 3, 4, 5, 10 + u]], columns=["user", "item"]
    ).assign(value=1.0)
    ds = build(df, None, KEEP_ALL, SplitConfig(method="strong", n_heldout_users=1))
    perm = np.random.RandomState(98765).permutation(5)
    users = np.arange(1, 6)
    train_users = sorted(users[perm[:3]])
    assert ds.user_ids.tolist() == users.tolist() and ds.train_users.tolist() == perm[:3].tolist()
    assert ds.item_ids.tolist() == [1, 2, 3, 4, 5] + [10 + u for u in train_users]
    assert ds.validation.users.tolist() == [perm[3]] and ds.test.users.tolist() == [perm[4]]
    target = int(np.random.RandomState(98765).permutation(5)[0])  # a column among items 1..5
    for part in (ds.validation, ds.test):
        assert dense(part.holdout) == [[int(c == target) for c in range(8)]]
        assert dense(part.fold_in) == [[int(c < 5 and c != target) for c in range(8)]]
    assert ds.train.sum(axis=1).tolist() == [[6]] * 3
    assert ds.manifest["drops"] == {**NO_DROPS, "unknown_items": 2}


def test_by_hand_random() -> None:
    """Derived (2) from the protocol: one user with 7 items (log order 1..7) and one with 4.
    The first gets int(0.2·7) = 1 test item, drawn by RandomState(98765).choice(7, 1); the
    second has fewer than 5 and keeps all 4 in training. Validation, RandomState(98765 + 1): the
    first user's 6 other rows give max(1, int(0.1·6)) = 1, ``choice(6, 1)`` among them in log
    order. The second user rated items 1..4 only, so a test item above 4 has no training row
    and is dropped unless the first user trains on it, which it does not (one row each)."""
    df = pd.DataFrame([(1, i) for i in range(1, 8)] + [(2, i) for i in range(1, 5)],
                      columns=["user", "item"]).assign(value=1.0)
    ds = build(df, None, KEEP_ALL, SplitConfig(method="random"))
    test_item = 1 + int(np.random.RandomState(98765).choice(7, 1, replace=False)[0])
    others = [i for i in range(1, 8) if i != test_item]
    val_item = others[int(np.random.RandomState(98766).choice(6, 1, replace=False)[0])]
    assert ds.item_ids.tolist() == sorted(set(others) | {1, 2, 3, 4})
    col = {i: c for c, i in enumerate(ds.item_ids.tolist())}
    unknown = test_item not in col
    assert ds.manifest["drops"]["unknown_items"] == int(unknown)
    assert ds.test.holdout.nnz == int(not unknown)
    if not unknown:
        assert ds.test.holdout[0, col[test_item]] == 1
    assert ds.validation.holdout.nnz == 1 and ds.validation.holdout[0, col[val_item]] == 1
    assert ds.train[0].nnz == 5 and ds.train[1].nnz == 4


# =========================================================================== matrices
@pytest.mark.parametrize("n", [0, 1, 5, 1000])
def test_csr_from_pairs_equals_scipy(n: int) -> None:
    """Against scipy (independent, 1): COO → CSR with duplicates summed, then made binary."""
    rng = np.random.default_rng(n)
    rows, cols = rng.integers(0, 30, n), rng.integers(0, 20, n)
    expected = sp.csr_matrix((np.ones(n, dtype=np.float32), (rows, cols)), shape=(30, 20))
    expected.sum_duplicates()
    expected.data[:] = 1.0
    assert_same_matrix(_csr(rows, cols, (30, 20)), expected, "csr")
    keys = (rows << 32) | cols
    distinct = rng.permutation(np.unique(keys))
    assert_same_matrix(_keys_to_csr(keys, (30, 20), reuse=True), expected, "reused")
    reused = _keys_to_csr(distinct, (30, 20), reuse=True)  # written over the keys' buffer
    assert_same_matrix(reused, expected, "reused, distinct")
    if n:
        assert np.shares_memory(reused.indices, distinct) and np.shares_memory(reused.data, distinct)
    longer = np.concatenate([(rows << 32) | cols, np.zeros(n, dtype=np.int64)])
    kept_apart = _keys_to_csr(longer[:n], (30, 20), reuse=True)  # would pin twice its size
    assert_same_matrix(kept_apart, expected, "kept apart")
    assert not np.shares_memory(kept_apart.indices, longer)
    seen = _keys_to_csr(rng.permutation((rows << 32) | cols), (30, 20), reuse=True, dtype=np.bool_)
    assert_same_matrix(seen, expected.astype(np.bool_), "bool")


def assert_same_matrix(a: sp.csr_matrix, b: sp.csr_matrix, what: str) -> None:
    assert a.shape == b.shape, what
    for name in ("indptr", "indices", "data"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, (what, name)
        np.testing.assert_array_equal(x, y, err_msg=f"{what}.{name}")
