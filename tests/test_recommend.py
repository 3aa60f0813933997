"""Top-k export: original ids, seen items excluded (all | train | none), the popularity fallback
for users the model cannot score, ranks, subsets, formats, atomic writes."""

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
from recvae.recommend import TopkFile, recommend_topk, write_recommendations
from tests.helpers import rows_csr

N_ITEMS = 8
ITEM_IDS = np.arange(100, 100 + N_ITEMS)
USER_IDS = np.array([f"u{i}" for i in range(6)], dtype=object)
DROPPED = np.array(["d6", "d7"], dtype=object)  # in the raw log, dropped by preprocessing
POSITIVES = [[0, 1, 2], [1, 2, 3, 4], [0, 1, 2, 3, 4, 5, 6], [5], [0, 7, 3], [2, 6]]
# the raw log's other pairs (ratings at or below the threshold) over the items: u0 rated item 7
# low, u5 item 0; d6 rated items 1 and 4, d7 none of the dataset's items
LOW_RATED = [[7], [], [], [], [], [0], [1, 4], []]


def _csr(rows: list[list[int]]) -> sp.csr_matrix:
    return rows_csr(rows, N_ITEMS)


def tiny_dataset(*, seen: bool = True) -> Dataset:
    """6 users × 8 items; u2 has seen 7 of the 8 items; u4/u5 are validation/test users; two
    more users of the raw log were dropped by preprocessing."""
    raw = [p + extra for p, extra in zip(POSITIVES + [[], []], LOW_RATED, strict=True)]
    return Dataset(
        train=_csr(POSITIVES[:4]),
        train_users=np.arange(4),
        validation=Part(fold_in=_csr([[0, 7]]), holdout=_csr([[3]]), users=np.array([4])),
        test=Part(fold_in=_csr([[2]]), holdout=_csr([[6]]), users=np.array([5])),
        user_ids=USER_IDS,
        item_ids=ITEM_IDS,
        manifest={"name": "tiny", "protocol": "strong"},
        seen=_csr(raw).astype(bool) if seen else None,
        dropped_user_ids=DROPPED if seen else np.zeros(0, object),
    )


def write(model: Recommender, ds: Dataset, path: Path, **kwargs) -> pd.DataFrame:  # noqa: ANN003
    out = write_recommendations(model, ds, path, **kwargs)
    assert isinstance(out, TopkFile) and out.path == path
    df = pd.read_csv(path) if path.suffix in (".csv", ".gz", ".out") else pd.read_parquet(path)
    assert out.rows == len(df) and out.users == df["user_id"].nunique()
    return df


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
    """Brute force: each dataset user's items sorted by the model's score on their positives,
    every item of their raw log left out; original ids."""
    users, full = ds.full_history()
    scores = model.score(full)
    out = {}
    for r, u in enumerate(users):
        seen = set(full[r].indices) | set(ds.seen[u].indices)
        order = [j for j in np.argsort(-scores[r], kind="stable") if j not in seen]
        out[ds.user_ids[u]] = [int(ITEM_IDS[j]) for j in order[:k]]
    return out


def seen_items(ds: Dataset) -> dict[str, set[int]]:
    """Every item of each user's raw log (positive or not), original ids; dropped users too."""
    return {
        u: {int(ITEM_IDS[j]) for j in ds.seen[r].indices} for r, u in enumerate(ds.raw_user_ids)
    }


def test_topk_file_has_original_ids_unseen_items_and_ranks(tmp_path: Path) -> None:
    ds, model, k = tiny_dataset(), Rotating(), 3
    df = write(model, ds, tmp_path / "topk.parquet", k=k)
    assert list(df.columns) == ["user_id", "rank", "item_id", "score", "source"]
    assert set(df["item_id"]) <= set(ITEM_IDS)
    seen = seen_items(ds)
    expected = reference_topk(model, ds, k)
    for user, g in df.groupby("user_id", sort=False):
        assert not set(g["item_id"]) & seen[user], f"{user} got an item of their raw log"
        assert len(g) == min(k, N_ITEMS - len(seen[user]))
        assert g["rank"].tolist() == list(range(1, len(g) + 1))
        assert (np.diff(g["score"].to_numpy()) <= 0).all()
        if user in expected:
            assert g["item_id"].tolist() == expected[user]
    # u2 has seen 7 of 8 items: one recommendation only
    assert (df["user_id"] == "u2").sum() == 1
    # every user of the raw log, the dataset's in order then the dropped ones, rows contiguous
    assert df["user_id"].drop_duplicates().tolist() == [*USER_IDS, *DROPPED]


def test_low_rated_items_are_excluded_only_with_exclude_all(tmp_path: Path) -> None:
    ds, model = tiny_dataset(), Rotating()
    every = write(model, ds, tmp_path / "all.parquet", k=N_ITEMS)
    train = write(model, ds, tmp_path / "train.parquet", k=N_ITEMS, exclude="train")
    none = write(model, ds, tmp_path / "none.parquet", k=N_ITEMS, exclude="none")

    def items(df: pd.DataFrame, user: str) -> set[int]:
        return set(df.loc[df["user_id"] == user, "item_id"])

    # u0 rated item 7 (id 107) low: never recommended by default, rankable without exclusion
    assert 107 not in items(every, "u0") and 107 in items(train, "u0")
    # u5 is a test user: fold-in item 2, held-out item 6, item 0 rated low
    assert items(every, "u5") == set(ITEM_IDS) - {100, 102, 106}
    assert items(train, "u5") == set(ITEM_IDS) - {102}  # the target 106 stays rankable
    assert items(none, "u5") == set(ITEM_IDS)
    assert none.groupby("user_id").size().eq(N_ITEMS).all()


def test_train_mode_scores_from_the_fold_in_only(tmp_path: Path) -> None:
    """For an offline check the model must not see the held-out targets it is checked on."""
    ds, model = tiny_dataset(), Rotating()  # Rotating's scores depend on the history's length
    df = write(model, ds, tmp_path / "t.parquet", k=N_ITEMS, users=["u5"], exclude="train")
    scores = model.score(_csr([[2]]))[0]  # u5's fold-in, without the held-out item 6
    expected = [int(ITEM_IDS[j]) for j in np.argsort(-scores, kind="stable") if j != 2]
    assert df["item_id"].tolist() == expected


def test_dropped_and_unknown_users_get_popularity_marked_as_fallback(tmp_path: Path) -> None:
    ds, model = tiny_dataset(), Rotating()
    df = write(model, ds, tmp_path / "t.csv", k=3, users=["d6", "u1", "nobody", "d7"])
    assert df["user_id"].drop_duplicates().tolist() == ["d6", "u1", "nobody", "d7"]
    source = df.groupby("user_id", sort=False)["source"].unique().map(list).to_dict()
    assert source == {"d6": ["fallback"], "u1": ["model"], "nobody": ["fallback"], "d7": ["fallback"]}
    _, positives = ds.full_history()
    popularity = np.bincount(positives.indices, minlength=N_ITEMS)
    order = [int(ITEM_IDS[j]) for j in np.argsort(-popularity, kind="stable")]
    d6 = df[df["user_id"] == "d6"]
    assert d6["item_id"].tolist() == [i for i in order if i not in {101, 104}][:3]  # its log left out
    assert d6["score"].tolist() == sorted(popularity[[i - 100 for i in d6["item_id"]]], reverse=True)
    assert df.loc[df["user_id"] == "nobody", "item_id"].tolist() == order[:3]
    assert df.loc[df["user_id"] == "d7", "item_id"].tolist() == order[:3]


def test_fallback_none_names_the_users_or_keeps_to_the_model(tmp_path: Path) -> None:
    ds, model = tiny_dataset(), Rotating()
    with pytest.raises(RecvaeError, match=r"1 dropped by preprocessing \(d6\) and 2 not in the "
                                          r"dataset \(nobody, ghost\).*fallback is none"):
        write_recommendations(model, ds, tmp_path / "t.csv", users=["u1", "d6", "nobody", "ghost"],
                              fallback="none")
    assert not any(tmp_path.iterdir())
    df = write(model, ds, tmp_path / "t.parquet", k=2, fallback="none")  # all: the model's users
    assert df["user_id"].drop_duplicates().tolist() == list(USER_IDS)
    assert (df["source"] == "model").all()


def test_exclude_all_needs_the_raw_log(tmp_path: Path) -> None:
    ds = tiny_dataset(seen=False)  # as a format-1 dataset loads
    with pytest.raises(RecvaeError, match="re-ingest"):
        write_recommendations(Rotating(), ds, tmp_path / "t.csv")
    df = write(Rotating(), ds, tmp_path / "t.parquet", k=2, exclude="train")
    assert set(df["user_id"]) == set(USER_IDS)
    with pytest.raises(RecvaeError, match="exclude must be one of all, train, none"):
        write_recommendations(Rotating(), ds, tmp_path / "t.csv", exclude="seen")
    with pytest.raises(RecvaeError, match="fallback must be one of popularity, none"):
        write_recommendations(Rotating(), ds, tmp_path / "t.csv", exclude="train", fallback="pop")


def test_k_larger_than_catalogue(tmp_path: Path) -> None:
    ds = tiny_dataset()
    df = write(Rotating(), ds, tmp_path / "t.parquet", k=50)
    seen = seen_items(ds)
    assert df.groupby("user_id").size().to_dict() == {u: N_ITEMS - len(s) for u, s in seen.items()}


def test_user_subset_in_given_order_and_ids_matched_by_text(tmp_path: Path) -> None:
    ds = tiny_dataset()
    df = write(Rotating(), ds, tmp_path / "t.csv", k=2, users=["u5", "u1", "u5"])
    assert df["user_id"].drop_duplicates().tolist() == ["u5", "u1"]
    assert len(df) == 4
    # integer ids given as text (as from a CLI) still match; an unknown one keeps the id type
    ds.user_ids, ds.dropped_user_ids = np.arange(10, 16), np.array([16, 17])
    df = write(Rotating(), ds, tmp_path / "i.parquet", k=2, users=["15", "99"])
    assert df["user_id"].tolist() == [15, 15, 99, 99]
    assert df["source"].tolist() == ["model", "model", "fallback", "fallback"]
    with pytest.raises(RecvaeError, match="abc: not in the dataset, and not of its id type"):
        write_recommendations(Rotating(), ds, tmp_path / "j.parquet", users=["abc"])


def test_unknown_users_are_listed(tmp_path: Path) -> None:
    with pytest.raises(RecvaeError, match=r"2 not in the dataset \(nobody, ghost\)"):
        write_recommendations(
            Rotating(), tiny_dataset(), tmp_path / "t.csv", users=["u1", "nobody", "ghost"],
            fallback="none",
        )
    assert not any(tmp_path.iterdir())


def test_csv_parquet_and_gzip_agree(tmp_path: Path) -> None:
    ds, model = tiny_dataset(), Rotating()
    pq_df = write(model, ds, tmp_path / "t.parquet", k=4)
    csv_df = write(model, ds, tmp_path / "t.csv", k=4)
    gz_df = write(model, ds, tmp_path / "t.csv.gz", k=4)
    forced = write(model, ds, tmp_path / "t.out", k=4, format="csv")
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
    one = write(model, ds, tmp_path / "a.parquet", k=5)
    many = write(model, ds, tmp_path / "b.parquet", k=5, batch_size=1)
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
    df = write(model, ds, tmp_path / "p.parquet", k=2)
    seen = seen_items(ds)
    assert all(not set(g["item_id"]) & seen[u] for u, g in df.groupby("user_id"))
