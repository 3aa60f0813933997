"""Top-k export: original ids, seen items excluded, ranks, subsets, formats, atomic writes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recvae.data.dataset import Dataset, Part
from recvae.errors import RecvaeError
from recvae.models.base import Recommender
from recvae.recommend import recommend_topk, write_recommendations
from tests.helpers import rows_csr

N_ITEMS = 8
ITEM_IDS = np.arange(100, 100 + N_ITEMS)
USER_IDS = np.array([f"u{i}" for i in range(6)], dtype=object)


def _csr(rows: list[list[int]]) -> sp.csr_matrix:
    return rows_csr(rows, N_ITEMS)


def tiny_dataset() -> Dataset:
    """6 users × 8 items; u2 has seen 7 of the 8 items; u4/u5 are validation/test users."""
    return Dataset(
        train=_csr([[0, 1, 2], [1, 2, 3, 4], [0, 1, 2, 3, 4, 5, 6], [5]]),
        train_users=np.arange(4),
        validation=Part(fold_in=_csr([[0, 7]]), holdout=_csr([[3]]), users=np.array([4])),
        test=Part(fold_in=_csr([[2]]), holdout=_csr([[6]]), users=np.array([5])),
        user_ids=USER_IDS,
        item_ids=ITEM_IDS,
        manifest={"name": "tiny", "protocol": "strong"},
    )


@dataclass
class Rotating(Recommender):
    """Deterministic, history-dependent scores with no ties: a permutation of the items per row."""

    name: ClassVar[str] = "rotating"
    fail_after_batches: int | None = None

    def __post_init__(self) -> None:
        self.item_ids_ = ITEM_IDS
        self.calls = 0

    def fit(self, dataset, *, callbacks=(), show_progress=False):
        return self

    def _score(self, fold_in: sp.csr_matrix) -> np.ndarray:
        self.calls += 1
        if self.fail_after_batches is not None and self.calls > self.fail_after_batches:
            raise RuntimeError("simulated crash while scoring")
        n = np.diff(fold_in.indptr)[:, None]
        return ((np.arange(N_ITEMS)[None, :] * 5 + 3 * n) % N_ITEMS).astype(np.float32)

    def _save_state(self, path: Path) -> None:
        pass

    def _load_state(self, path: Path) -> None:
        pass


def reference_topk(model: Recommender, ds: Dataset, k: int) -> dict[str, list[int]]:
    """Brute force: every user's unseen items sorted by score, original ids."""
    users, full = ds.full_history()
    scores = model.score(full)
    out = {}
    for r, u in enumerate(users):
        seen = set(full[r].indices)
        order = [j for j in np.argsort(-scores[r], kind="stable") if j not in seen]
        out[ds.user_ids[u]] = [int(ITEM_IDS[j]) for j in order[:k]]
    return out


def seen_items(ds: Dataset) -> dict[str, set[int]]:
    users, full = ds.full_history()
    return {
        ds.user_ids[u]: {int(ITEM_IDS[j]) for j in full[r].indices} for r, u in enumerate(users)
    }


def test_topk_file_has_original_ids_unseen_items_and_ranks(tmp_path: Path) -> None:
    ds, model, k = tiny_dataset(), Rotating(), 3
    out = write_recommendations(model, ds, tmp_path / "topk.parquet", k=k)
    df = pd.read_parquet(out)
    assert list(df.columns) == ["user_id", "rank", "item_id", "score"]
    assert set(df["user_id"]) == set(USER_IDS)
    assert set(df["item_id"]) <= set(ITEM_IDS)
    seen = seen_items(ds)
    expected = reference_topk(model, ds, k)
    for user, g in df.groupby("user_id", sort=False):
        assert not set(g["item_id"]) & seen[user], f"{user} got a seen item"
        assert len(g) == min(k, N_ITEMS - len(seen[user]))
        assert g["rank"].tolist() == list(range(1, len(g) + 1))
        assert (np.diff(g["score"].to_numpy()) <= 0).all()
        assert g["item_id"].tolist() == expected[user]
    # u2 has seen 7 of 8 items: one recommendation only
    assert (df["user_id"] == "u2").sum() == 1
    # users in dataset order, each user's rows contiguous
    assert df["user_id"].drop_duplicates().tolist() == list(USER_IDS)


def test_k_larger_than_catalogue(tmp_path: Path) -> None:
    ds = tiny_dataset()
    df = pd.read_parquet(write_recommendations(Rotating(), ds, tmp_path / "t.parquet", k=50))
    seen = seen_items(ds)
    assert df.groupby("user_id").size().to_dict() == {u: N_ITEMS - len(s) for u, s in seen.items()}


def test_user_subset_in_given_order_and_ids_matched_by_text(tmp_path: Path) -> None:
    ds = tiny_dataset()
    df = pd.read_csv(
        write_recommendations(Rotating(), ds, tmp_path / "t.csv", k=2, users=["u5", "u1", "u5"])
    )
    assert df["user_id"].drop_duplicates().tolist() == ["u5", "u1"]
    assert len(df) == 4
    # integer ids given as text (as from a CLI) still match
    ds.user_ids = np.arange(10, 16)
    df = pd.read_parquet(write_recommendations(Rotating(), ds, tmp_path / "i.parquet", k=2,
                                               users=["15"]))
    assert df["user_id"].tolist() == [15, 15]


def test_unknown_users_are_listed(tmp_path: Path) -> None:
    with pytest.raises(RecvaeError, match=r"2 unknown user id\(s\).*nobody.*ghost"):
        write_recommendations(
            Rotating(), tiny_dataset(), tmp_path / "t.csv", users=["u1", "nobody", "ghost"]
        )
    assert not any(tmp_path.iterdir())


def test_csv_parquet_and_gzip_agree(tmp_path: Path) -> None:
    ds, model = tiny_dataset(), Rotating()
    pq_df = pd.read_parquet(write_recommendations(model, ds, tmp_path / "t.parquet", k=4))
    csv_df = pd.read_csv(write_recommendations(model, ds, tmp_path / "t.csv", k=4))
    gz_df = pd.read_csv(write_recommendations(model, ds, tmp_path / "t.csv.gz", k=4))
    forced = pd.read_csv(write_recommendations(model, ds, tmp_path / "t.out", k=4, format="csv"))
    for other in (csv_df, gz_df, forced):
        pd.testing.assert_frame_equal(pq_df, other, check_dtype=False)
    with pytest.raises(RecvaeError, match="output format"):
        write_recommendations(model, ds, tmp_path / "t.txt")


def test_failure_mid_write_leaves_nothing(tmp_path: Path) -> None:
    ds = tiny_dataset()
    out = tmp_path / "topk.parquet"
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_recommendations(Rotating(fail_after_batches=1), ds, out, k=3, batch_size=2)
    assert list(tmp_path.iterdir()) == []
    # an existing file survives a failed rewrite untouched
    write_recommendations(Rotating(), ds, out, k=3)
    before = out.read_bytes()
    with pytest.raises(RuntimeError):
        write_recommendations(Rotating(fail_after_batches=2), ds, out, k=1, batch_size=1)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["topk.parquet"]


def test_batching_matches_single_batch(tmp_path: Path) -> None:
    ds, model = tiny_dataset(), Rotating()
    one = pd.read_parquet(write_recommendations(model, ds, tmp_path / "a.parquet", k=5))
    many = pd.read_parquet(
        write_recommendations(model, ds, tmp_path / "b.parquet", k=5, batch_size=1)
    )
    pd.testing.assert_frame_equal(one, many)
    _, full = ds.full_history()
    a = recommend_topk(model, full, 5, batch_size=4)
    b = recommend_topk(model, full, 5, batch_size=10_000)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_recommend_topk_arrays_and_exclude_seen_flag() -> None:
    model = Rotating()
    history = _csr([[0, 1, 2, 3, 4, 5, 6], []])
    rows, items, scores = recommend_topk(model, history, 3)
    assert rows.tolist() == [0, 1, 1, 1] and items[0] == 7
    assert rows.dtype == np.int64 and items.dtype == np.int64 and scores.dtype == np.float32
    rows, items, _ = recommend_topk(model, history, 3, exclude_seen=False)
    assert rows.tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(RecvaeError, match="k must be"):
        recommend_topk(model, history, 0)


def test_item_vocabulary_mismatch_is_refused(tmp_path: Path) -> None:
    ds = tiny_dataset()
    ds.item_ids = ITEM_IDS + 1
    with pytest.raises(RecvaeError, match="item vocabulary"):
        write_recommendations(Rotating(), ds, tmp_path / "t.csv")


def test_works_with_a_real_model(tmp_path: Path) -> None:
    from recvae.models.popularity import Popularity

    ds = tiny_dataset()
    model = Popularity().fit(ds)
    df = pd.read_parquet(write_recommendations(model, ds, tmp_path / "p.parquet", k=2))
    seen = seen_items(ds)
    assert all(not set(g["item_id"]) & seen[u] for u, g in df.groupby("user_id"))
