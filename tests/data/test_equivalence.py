"""The compact pipeline (read → Interactions → preprocess in place → split → a second read for the
seen pairs) builds, bit for bit, the datasets of main's DataFrame pipeline
(tests/data/legacy_pipeline.py), drop counts and seen pairs included, for every split and
preprocessing option, on logs with duplicates, tied timestamps, text ids and parts.

Chunks and user blocks are shrunk to a few rows so every pass crosses many chunk and block
boundaries.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import make_ratings

import legacy_pipeline as legacy
from recvae.data import interactions as interactions_module
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


def compact_pipeline(df: pd.DataFrame, threshold, pp: dict, split: SplitConfig) -> Dataset:
    """What ingest builds from ``df``: the log read into Interactions, then read again for the
    seen pairs."""
    return build_dataset(
        lambda: Interactions.from_frame(df, threshold=threshold),
        lambda users, items, rows: SeenBuilder.from_frame(df, users, items),
        PreprocessConfig(threshold=threshold, **pp),
        split,
    )


def legacy_pipeline(df: pd.DataFrame, threshold, pp: dict, split: SplitConfig) -> Dataset:
    return legacy.ingest_frame(df, {"threshold": threshold, **pp}, split)


def assert_same_matrix(a: sp.csr_matrix, b: sp.csr_matrix, what: str) -> None:
    assert a.shape == b.shape, what
    for name in ("indptr", "indices", "data"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, (what, name)
        np.testing.assert_array_equal(x, y, err_msg=f"{what}.{name}")


def assert_same_dataset(new: Dataset, old: Dataset) -> None:
    assert_same_matrix(new.train, old.train, "train")
    np.testing.assert_array_equal(new.train_users, old.train_users)
    for name in ("validation", "test"):
        a, b = new.part(name), old.part(name)
        assert_same_matrix(a.fold_in, b.fold_in, f"{name}.fold_in")
        assert_same_matrix(a.holdout, b.holdout, f"{name}.holdout")
        np.testing.assert_array_equal(a.users, b.users)
    for ids in ("user_ids", "item_ids"):
        x, y = getattr(new, ids), getattr(old, ids)
        assert x.dtype == y.dtype, ids
        np.testing.assert_array_equal(x, y)
    assert_same_matrix(new.seen, old.seen, "seen")
    np.testing.assert_array_equal(new.dropped_user_ids, old.dropped_user_ids)
    if len(old.dropped_user_ids):
        assert new.dropped_user_ids.dtype == old.dropped_user_ids.dtype
    assert {k: v for k, v in new.manifest.items() if k != "timings"} == old.manifest
    assert sum(old.manifest["drops"].values()) > 0  # something to count


SPLITS = [
    SplitConfig(method="strong", n_heldout_users=40),
    SplitConfig(method="strong", n_heldout_users=25, test_prop=0.3, seed=7),
    SplitConfig(method="random"),
    SplitConfig(method="random", test_prop=0.3, validation_prop=0.2, seed=3),
    SplitConfig(method="temporal", leave_last=1),
    SplitConfig(method="temporal", leave_last=3),
    SplitConfig(method="temporal", leave_last=None, cutoff=1.06e9),
]
PREPROCESS = [
    (3.5, {"min_item_users": 0, "min_user_items": 5}),
    (None, {"min_item_users": 3, "min_user_items": 5}),
    (2.0, {"min_item_users": 4, "min_user_items": 3, "iterate": True}),
    (3.5, {"min_item_users": 0, "min_user_items": 0}),
]


@pytest.mark.parametrize("split", SPLITS, ids=lambda s: f"{s.method}-{s.leave_last}-{s.seed}")
@pytest.mark.parametrize("prep", PREPROCESS, ids=["paper", "min-sc", "k-core", "no-filter"])
def test_same_dataset_as_the_dataframe_pipeline(split: SplitConfig, prep: tuple) -> None:
    threshold, pp = prep
    df = messy_log(len(SPLITS))
    old = legacy_pipeline(df, threshold, pp, split)
    assert_same_dataset(compact_pipeline(df, threshold, pp, split), old)


@pytest.mark.parametrize("split", SPLITS, ids=lambda s: f"{s.method}-{s.leave_last}-{s.seed}")
def test_same_dataset_with_text_ids(split: SplitConfig) -> None:
    threshold, pp = PREPROCESS[0]
    df = messy_log(3, text_ids=True)
    old = legacy_pipeline(df, threshold, pp, split)
    new = compact_pipeline(df, threshold, pp, split)
    assert new.user_ids.dtype == object
    assert_same_dataset(new, old)


@pytest.mark.parametrize(
    "split",
    [SplitConfig(method="predefined"), SplitConfig(method="predefined", validation_prop=0.3, seed=5),
     SplitConfig(method="strong", n_heldout_users=30)],
    ids=["predefined", "predefined-seed", "strong"],
)
def test_same_dataset_with_parts(split: SplitConfig) -> None:
    # The same pair in both parts survives deduplication twice; matrices merge it.
    df = messy_log(11, parts=True)
    df = df.drop(columns="timestamp")
    pp = {"min_item_users": 0, "min_user_items": 5}
    old = legacy_pipeline(df, None, pp, split)
    assert_same_dataset(compact_pipeline(df, None, pp, split), old)


def test_dataframe_functions_keep_the_same_rows() -> None:
    df = messy_log(12)
    from recvae.data import preprocess as new

    pd.testing.assert_frame_equal(new.drop_duplicates(df), legacy.drop_duplicates(df))
    pd.testing.assert_frame_equal(new.drop_duplicates(df.drop(columns="timestamp")),
                                  legacy.drop_duplicates(df.drop(columns="timestamp")))
    once = legacy.drop_duplicates(df)
    for kwargs in ({"min_item_users": 3}, {"min_user_items": 4, "iterate": True}):
        pd.testing.assert_frame_equal(new.filter_min_counts(once, **kwargs),
                                      legacy.filter_min_counts(once, **kwargs))
    new_drops: dict[str, int] = {}
    old_drops: dict[str, int] = {}
    pd.testing.assert_frame_equal(
        new.preprocess(df, threshold=2.5, min_item_users=2, drops=new_drops),
        legacy.preprocess(df, threshold=2.5, min_item_users=2, drops=old_drops),
    )
    assert new_drops == old_drops and all(old_drops.values())


def test_negative_values_refused_as_before() -> None:
    df = messy_log(5, text_ids=True)
    df.loc[df.index[[40, 7, 300]], "value"] = [-1.5, -2.0, -0.5]  # the first in log order: row 7
    messages = []
    for run in (legacy_pipeline, compact_pipeline):
        with pytest.raises(RecvaeError, match=r"3 interaction\(s\) with a negative value") as e:
            run(df, None, {"min_user_items": 5}, SPLITS[0])
        messages.append(str(e.value))
    assert messages[0] == messages[1]
    assert f"first: user {df['user'].iloc[7]}, item {df['item'].iloc[7]}, value -2)" in messages[1]
    allowed = {"min_user_items": 5, "allow_negative": True}
    old = legacy_pipeline(df, None, allowed, SPLITS[0])
    new = build_dataset(
        lambda: Interactions.from_frame(df, threshold=None, allow_negative=True),
        lambda users, items, rows: SeenBuilder.from_frame(df, users, items),
        PreprocessConfig(threshold=None, **allowed),
        SPLITS[0],
    )
    assert_same_dataset(new, old)


@pytest.mark.parametrize(
    "threshold, split",
    [(3.5, SplitConfig(method="strong", n_heldout_users=30)),
     (None, SplitConfig(method="temporal", leave_last=2)),
     (2.0, SplitConfig(method="random", seed=4))],
    ids=["strong", "temporal", "random"],
)
def test_table_ingest_same_as_the_dataframe_pipeline(
    tmp_path: Path, threshold, split: SplitConfig
) -> None:
    """The streamed table source, read twice (positives, then the seen pairs) from Parquet parts,
    against main's pipeline on the frame that source's reader gives for the same rows. User ids
    are text that is all canonical integers (int64 after reading), item ids text."""
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
    old = legacy_pipeline(read_source("table", whole, **options), threshold, pp, split)
    assert old.user_ids.dtype == np.int64 and old.item_ids.dtype == object
    assert len(old.dropped_user_ids) > 0
    data = DataConfig(
        source="table", path=str(folder), options=options, out=str(tmp_path / "ds"),
        preprocess=PreprocessConfig(threshold=threshold, **pp), split=split,
    )
    new, _ = ingest(data)
    saved = {k: new.manifest[k] for k in old.manifest}
    assert_same_dataset(Dataset(**{**new.__dict__, "manifest": saved}), old)
    assert Dataset.load(tmp_path / "ds").digest() == new.digest()


@pytest.mark.parametrize("n", [0, 1, 5, 1000])
def test_csr_from_pairs_equals_scipy(n: int) -> None:
    rng = np.random.default_rng(n)
    rows, cols = rng.integers(0, 30, n), rng.integers(0, 20, n)
    expected = legacy._csr(rows, cols, (30, 20))
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
