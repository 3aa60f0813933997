"""Tests for recvae.data.ingest: build from the bundled MovieLens zip, cache reuse, rebuilds."""

from __future__ import annotations

import json
import shutil
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recvae.data.spec import DataConfig, PreprocessConfig, SplitConfig
from recvae.data import ingest as ingest_module
from recvae.data.dataset import Dataset
from recvae.data.ingest import cache_key, drop_lines, ingest, source_digest
from recvae.data.split import apply_split
from recvae.errors import RecvaeError


def mtimes(path: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in path.iterdir()} | {".": path.stat().st_mtime_ns}


@pytest.fixture(scope="module")
def ml_small_ratings(ml_small_zip: Path) -> pd.DataFrame:
    with zipfile.ZipFile(ml_small_zip) as zf, zf.open("ml-latest-small/ratings.csv") as f:
        return pd.read_csv(f)


def test_ingest_bundled_movielens(ml_small_zip: Path, ml_small_ratings: pd.DataFrame, tmp_path: Path) -> None:
    data = DataConfig(source="movielens", path=str(ml_small_zip), out=str(tmp_path / "ds"),
                      split=SplitConfig(n_heldout_users=60))
    ds, reused = ingest(data)
    assert not reused
    # independent count with pandas: > 3.5 stars, users with ≥ 5 positives
    pos = ml_small_ratings[ml_small_ratings["rating"] > 3.5]
    counts = pos["userId"].value_counts()
    kept = pos[pos["userId"].isin(counts.index[counts >= 5])]
    assert ds.n_users == kept["userId"].nunique() == 603
    assert ds.summary()["interactions"] + ds.manifest["drops"]["unknown_items"] == len(kept)
    assert ds.manifest["raw_interactions"] == len(ml_small_ratings) == 100_836
    assert ds.manifest["positive_interactions"] == len(kept)
    assert ds.manifest["name"] == "ml-latest-small"
    assert set(ds.manifest["source_sha256"]) == {"ml-latest-small.zip"}
    assert ds.validation.n_users == ds.test.n_users == 60
    assert_same_on_disk(ds, tmp_path / "ds")


def test_ingest_records_every_pair_of_the_raw_log(
    ml_small_zip: Path, ml_small_ratings: pd.DataFrame, tmp_path: Path
) -> None:
    """``seen``: every (user, item) rating, whatever its value, over the training items; the
    users preprocessing dropped come after the dataset's users."""
    data = DataConfig(source="movielens", path=str(ml_small_zip), out=str(tmp_path / "ds"),
                      split=SplitConfig(n_heldout_users=60))
    ingest(data)
    ds = Dataset.load(tmp_path / "ds")  # as stored
    raw = ml_small_ratings
    assert ds.manifest["raw_users"] == raw["userId"].nunique() == 610
    assert ds.manifest["dropped_users"] == 7 == len(ds.dropped_user_ids)
    assert ds.raw_user_ids.tolist() == [*ds.user_ids.tolist(), *sorted(ds.dropped_user_ids.tolist())]
    assert set(ds.dropped_user_ids.tolist()) == set(raw["userId"]) - set(ds.user_ids.tolist())
    assert ds.seen.dtype == np.bool_ and ds.seen.shape == (610, ds.n_items)
    rows, cols = ds.seen.nonzero()
    got = set(zip(ds.raw_user_ids[rows].tolist(), ds.item_ids[cols].tolist(), strict=True))
    in_vocab = raw[raw["movieId"].isin(set(ds.item_ids.tolist()))]
    assert got == set(zip(in_vocab["userId"].tolist(), in_vocab["movieId"].tolist(), strict=True))
    # every positive is among them, and so are the low ratings
    users, full = ds.full_history()
    assert (full.astype(bool) > ds.seen[users]).nnz == 0
    assert ds.seen.nnz > full.nnz


def assert_same_on_disk(ds: Dataset, path: Path) -> None:
    loaded = Dataset.load(path)
    assert (loaded.train != ds.train).nnz == 0
    assert loaded.manifest["key"] == ds.manifest["key"]
    np.testing.assert_array_equal(loaded.item_ids, ds.item_ids)


@pytest.fixture
def csv_config(movielens_csv: Path, tmp_path: Path) -> DataConfig:
    return DataConfig(source="movielens", path=str(movielens_csv), out=str(tmp_path / "out" / "ds"),
                      split=SplitConfig(n_heldout_users=10))


def test_same_inputs_reuse_the_dataset(csv_config: DataConfig) -> None:
    ds, reused = ingest(csv_config)
    assert not reused
    before = mtimes(csv_config.out_dir)
    again, reused = ingest(csv_config)
    assert reused
    assert mtimes(csv_config.out_dir) == before  # nothing rewritten
    assert (again.test.holdout != ds.test.holdout).nnz == 0
    assert again.manifest["key"] == ds.manifest["key"]


def test_force_rebuilds(csv_config: DataConfig) -> None:
    ingest(csv_config)
    before = mtimes(csv_config.out_dir)
    _, reused = ingest(csv_config, force=True)
    assert not reused
    assert mtimes(csv_config.out_dir)["manifest.json"] != before["manifest.json"]


@pytest.mark.parametrize(
    "change",
    [
        {"preprocess": PreprocessConfig(threshold=3.0)},
        {"preprocess": PreprocessConfig(min_user_items=6)},
        {"split": SplitConfig(n_heldout_users=11)},
        {"split": SplitConfig(n_heldout_users=10, seed=1)},
        {"split": SplitConfig(method="random")},
    ],
    ids=["threshold", "min_user_items", "n_heldout", "seed", "method"],
)
def test_changed_parameter_rebuilds(csv_config: DataConfig, change: dict) -> None:
    first, _ = ingest(csv_config)
    changed = replace(csv_config, **change)
    ds, reused = ingest(changed)
    assert not reused
    assert ds.manifest["key"] != first.manifest["key"]
    assert Dataset.load(changed.out_dir).manifest["key"] == ds.manifest["key"]


def test_changed_source_bytes_rebuild(csv_config: DataConfig, movielens_csv: Path) -> None:
    first, _ = ingest(csv_config)
    lines = movielens_csv.read_text().splitlines()
    user = lines[1].split(",")[0]
    movielens_csv.write_text("\n".join(lines + [f"{user},999999,5.0,1"]) + "\n")
    ds, reused = ingest(csv_config)
    assert not reused
    assert ds.manifest["source_sha256"] != first.manifest["source_sha256"]
    assert ds.manifest["raw_interactions"] == first.manifest["raw_interactions"] + 1


def test_damaged_cached_dataset_rebuilds(csv_config: DataConfig) -> None:
    first, _ = ingest(csv_config)
    (csv_config.out_dir / "test_holdout.npz").unlink()
    ds, reused = ingest(csv_config)
    assert not reused
    assert (Dataset.load(csv_config.out_dir).test.holdout != first.test.holdout).nnz == 0


def test_corrupt_manifest_rebuilds(csv_config: DataConfig) -> None:
    ingest(csv_config)
    (csv_config.out_dir / "manifest.json").write_text("{oops")
    ds, reused = ingest(csv_config)
    assert not reused
    assert json.loads((csv_config.out_dir / "manifest.json").read_text())["key"] == ds.manifest["key"]


def test_source_digest_of_a_folder(movielens_csv: Path, tmp_path: Path) -> None:
    folder = movielens_csv.parent
    shutil.copy(movielens_csv, folder / "extra.csv")
    digest = source_digest(folder)
    assert set(digest) == {"ratings.csv", "extra.csv"}
    assert digest["ratings.csv"] == digest["extra.csv"]
    with pytest.raises(RecvaeError, match="nope.zip: no such file or folder"):
        source_digest(tmp_path / "nope.zip")


def test_cache_key_ignores_name_and_out(csv_config: DataConfig) -> None:
    digest = source_digest(csv_config.path)
    key = cache_key(csv_config, digest)
    assert cache_key(replace(csv_config, name="other", out="elsewhere"), digest) == key
    assert cache_key(replace(csv_config, options={"x": 1}), digest) != key
    assert cache_key(csv_config, {"ratings.csv": "0" * 64}) != key


# ------------------------------------------------------------------ apply_split
@pytest.mark.parametrize(("n_users", "expected"), [(5, 1), (603, 60), (99_999, 9_999), (250_000, 10_000)])
def test_default_n_heldout_users(monkeypatch: pytest.MonkeyPatch, n_users: int, expected: int) -> None:
    seen = {}

    def fake(df, n_heldout_users, **kwargs):
        seen["n"] = n_heldout_users
        return "dataset"

    monkeypatch.setattr(ingest_module.splits, "strong_generalization", fake)
    df = pd.DataFrame({"user": np.repeat(np.arange(n_users), 2)})
    data = DataConfig(source="movielens", path="x")
    assert apply_split(df, data.split) == "dataset"
    assert seen["n"] == expected


def test_explicit_n_heldout_users_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest_module.splits, "strong_generalization", lambda df, n, **kw: n)
    data = DataConfig(source="movielens", path="x", split=SplitConfig(n_heldout_users=7))
    assert apply_split(pd.DataFrame({"user": np.arange(1000)}), data.split) == 7


def test_split_methods(positives: pd.DataFrame) -> None:
    def run(**split) -> Dataset:
        return apply_split(positives, SplitConfig(**split))

    assert run(method="temporal").manifest["split"]["leave_last"] == 1  # the default
    assert run(method="temporal", leave_last=3).manifest["split"]["leave_last"] == 3
    assert run(method="temporal", cutoff=1.05e9).manifest["split"]["cutoff"] == 1.05e9
    assert run(method="random", test_prop=0.3).manifest["split"]["test_prop"] == 0.3
    with pytest.raises(RecvaeError, match="needs a source with its own train/test parts"):
        run(method="predefined")
    with pytest.raises(RecvaeError, match="unknown split 'bogus'"):
        run(method="bogus")


# ------------------------------------------------------------------ drops
def test_every_drop_is_counted_by_reason(ml_small_zip: Path, ml_small_ratings: pd.DataFrame,
                                        tmp_path: Path) -> None:
    data = DataConfig(source="movielens", path=str(ml_small_zip), out=str(tmp_path / "ds"),
                      preprocess=PreprocessConfig(min_item_users=3),
                      split=SplitConfig(n_heldout_users=60))
    ds, _ = ingest(data)
    drops = ds.manifest["drops"]
    assert list(drops) == ["below_threshold", "duplicates", "min_item_users", "min_user_items",
                           "unknown_items"]
    r = ml_small_ratings
    assert drops["below_threshold"] == int((r["rating"] <= 3.5).sum())
    assert drops["duplicates"] == 0
    # every raw interaction is accounted for: kept in the dataset or dropped for one reason
    assert ds.summary()["interactions"] + sum(drops.values()) == len(r)
    assert Dataset.load(data.out_dir).manifest["drops"] == drops
    lines = drop_lines(ds.manifest)
    assert len(lines) == sum(1 for n in drops.values() if n)
    assert lines[0] == (f"dropped {drops['below_threshold']:,} interactions "
                        f"({100 * drops['below_threshold'] / len(r):.1f} %) with a value not above "
                        "preprocess.threshold (3.5)")
    assert any("fewer than preprocess.min_item_users = 3 users" in line for line in lines)


def test_predefined_split_counts_test_items_never_trained_on(tmp_path: Path) -> None:
    root = tmp_path / "gowalla"
    root.mkdir()
    (root / "train.txt").write_text("0 1 2\n1 2 3\n2 1 3\n")
    (root / "test.txt").write_text("0 3 9\n1 1 8 9\n2 2\n")  # items 8 and 9: test only
    data = DataConfig(source="lightgcn", path=str(root), out=str(tmp_path / "ds"),
                      preprocess=PreprocessConfig(threshold=None, min_user_items=0),
                      split=SplitConfig(method="predefined"))
    ds, _ = ingest(data)
    assert ds.manifest["drops"]["unknown_items"] == 3
    assert ds.test.holdout.nnz == 3
    assert any(line.startswith("dropped 3 interactions (25.0 %) in validation/test on items")
               for line in drop_lines(ds.manifest))


def test_negative_values_need_allow_negative(tmp_path: Path) -> None:
    log = tmp_path / "events.csv"
    log.write_text("user,item,qty\n" + "".join(f"{u},{i},{-1 if i == 0 else 2}\n"
                                                for u in range(30) for i in range(8)))
    data = DataConfig(source="table", path=str(log), options={"value_col": "qty"},
                      out=str(tmp_path / "ds"), preprocess=PreprocessConfig(threshold=None),
                      split=SplitConfig(n_heldout_users=3))
    with pytest.raises(RecvaeError, match=r"events\.csv: 30 interaction\(s\) with a negative value"):
        ingest(data)
    assert not data.out_dir.exists()
    allowed = replace(data, preprocess=PreprocessConfig(threshold=None, allow_negative=True))
    ds, _ = ingest(allowed)
    assert ds.summary()["interactions"] + ds.manifest["drops"]["unknown_items"] == 240
    assert cache_key(allowed, {}) != cache_key(data, {})
