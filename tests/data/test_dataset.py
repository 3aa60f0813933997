"""Tests for recvae.data.dataset: save/load round trip, atomic save, load errors, helpers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recvae.data import dataset as dataset_module
from recvae.data.dataset import FILES, FORMAT_VERSION, Dataset, Part
from recvae.data.split import random_holdout, strong_generalization
from recvae.errors import RecvaeError
from recvae.io import sha256_file

MATRICES = ("train", "validation_fold_in", "validation_holdout", "test_fold_in", "test_holdout")


def matrices(ds: Dataset) -> dict[str, sp.csr_matrix]:
    out = {"train": ds.train}
    for name in ("validation", "test"):
        p = ds.part(name)
        out[f"{name}_fold_in"], out[f"{name}_holdout"] = p.fold_in, p.holdout
    return out


def assert_same(a: Dataset, b: Dataset) -> None:
    for name, m in matrices(a).items():
        other = matrices(b)[name]
        assert isinstance(other, sp.csr_matrix) and other.dtype == np.float32, name
        assert m.shape == other.shape and (m != other).nnz == 0, name
    np.testing.assert_array_equal(a.train_users, b.train_users)
    for name in ("validation", "test"):
        np.testing.assert_array_equal(a.part(name).users, b.part(name).users)
    assert a.user_ids.tolist() == b.user_ids.tolist()
    assert a.item_ids.tolist() == b.item_ids.tolist()


@pytest.fixture
def strong(positives: pd.DataFrame) -> Dataset:
    df = positives.assign(user="u" + positives["user"].astype(str))  # string user ids
    return strong_generalization(df, 20)


@pytest.fixture
def weak(positives: pd.DataFrame) -> Dataset:
    return random_holdout(positives)


# ------------------------------------------------------------------ round trip
@pytest.mark.parametrize("kind", ["strong", "weak"])
def test_save_load_round_trip(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    ds: Dataset = request.getfixturevalue(kind)
    before = {k: v for k, v in ds.manifest.items()}
    out = ds.save(tmp_path / "ds")
    assert out == tmp_path / "ds"
    loaded = Dataset.load(out)
    assert_same(ds, loaded)
    assert loaded.protocol == kind
    assert loaded.manifest["format"] == FORMAT_VERSION
    assert loaded.manifest["counts"] == ds.summary()
    for key, value in before.items():
        assert loaded.manifest[key] == value
    assert {p.name for p in out.iterdir()} == {
        "manifest.json", "users.parquet", "items.parquet", "train.npz", "train_users.npy",
        *(f"{n}_{k}" for n in ("validation", "test") for k in ("fold_in.npz", "holdout.npz", "users.npy")),
    }


def test_string_ids_round_trip(strong: Dataset, tmp_path: Path) -> None:
    loaded = Dataset.load(strong.save(tmp_path / "ds"))
    assert all(isinstance(u, str) for u in loaded.user_ids)
    assert loaded.user_ids[loaded.test.users].tolist() == strong.user_ids[strong.test.users].tolist()
    assert loaded.item_ids.dtype.kind == "i"


def test_save_replaces_an_existing_dataset(strong: Dataset, weak: Dataset, tmp_path: Path) -> None:
    path = tmp_path / "ds"
    strong.save(path)
    weak.save(path)
    assert_same(weak, Dataset.load(path))
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temporary or old directories left


# ------------------------------------------------------------------ atomic save
def crash_on_second_call(monkeypatch: pytest.MonkeyPatch, target: object, name: str) -> list[str]:
    calls: list[str] = []
    real = getattr(target, name)

    def flaky(file, *args, **kwargs):
        calls.append(str(file))
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return real(file, *args, **kwargs)

    monkeypatch.setattr(target, name, flaky)
    return calls


@pytest.mark.parametrize("target", ["save_npz", "np.save"])
def test_crash_mid_save_leaves_nothing(
    target: str, strong: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module, name = (np, "save") if target == "np.save" else (sp, "save_npz")
    calls = crash_on_second_call(monkeypatch, module, name)
    manifest = dict(strong.manifest)
    with pytest.raises(OSError, match="simulated"):
        strong.save(tmp_path / "ds")
    assert len(calls) == 2  # the first file was written before the crash
    assert not (tmp_path / "ds").exists()
    assert list(tmp_path.iterdir()) == []  # no .tmp- directory left behind
    assert strong.manifest == manifest


def test_crash_mid_save_keeps_the_old_dataset(
    strong: Dataset, weak: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ds"
    strong.save(path)
    manifest_text = (path / "manifest.json").read_text()
    crash_on_second_call(monkeypatch, sp, "save_npz")
    with pytest.raises(OSError, match="simulated"):
        weak.save(path)
    monkeypatch.undo()
    assert (path / "manifest.json").read_text() == manifest_text
    assert_same(strong, Dataset.load(path))
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]
    assert not any(".tmp-" in p.name or ".old-" in p.name for p in tmp_path.iterdir())


def test_save_rejects_inconsistent_shapes(strong: Dataset, tmp_path: Path) -> None:
    bad = Part(strong.test.fold_in[:, :-1], strong.test.holdout[:, :-1], strong.test.users)
    ds = Dataset(strong.train, strong.train_users, strong.validation, bad, strong.user_ids,
                 strong.item_ids, dict(strong.manifest))
    with pytest.raises(RecvaeError, match=rf"test_fold_in: {strong.n_items - 1} columns, expected "
                                          rf"{strong.n_items} items"):
        ds.save(tmp_path / "ds")
    assert not (tmp_path / "ds").exists()
    rows = Part(strong.test.fold_in, strong.test.holdout, strong.test.users[:-1])
    ds = Dataset(strong.train, strong.train_users, strong.validation, rows, strong.user_ids,
                 strong.item_ids)
    with pytest.raises(RecvaeError, match="'test'.*disagree in rows"):
        ds.save(tmp_path / "ds")


# ------------------------------------------------------------------ load errors
def test_load_without_manifest(tmp_path: Path) -> None:
    with pytest.raises(RecvaeError, match=r"not a recvae dataset \(no manifest\.json\).*recvae ingest"):
        Dataset.load(tmp_path)
    with pytest.raises(RecvaeError, match="no manifest.json"):
        Dataset.load(tmp_path / "missing")


def test_load_wrong_format(strong: Dataset, tmp_path: Path) -> None:
    path = strong.save(tmp_path / "ds")
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "format": 99}))
    with pytest.raises(RecvaeError, match=rf"dataset format 99, expected {FORMAT_VERSION}; re-ingest"):
        Dataset.load(path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(RecvaeError, match=r"manifest\.json: invalid JSON"):
        Dataset.load(path)


def test_seen_pairs_round_trip(strong: Dataset, tmp_path: Path) -> None:
    users, full = strong.full_history()
    seen = sp.vstack([full.astype(bool), sp.csr_matrix(([True], ([0], [3])), shape=(2, strong.n_items))])
    with_seen = Dataset(**{**strong.__dict__, "seen": seen.tocsr(),
                           "dropped_user_ids": np.array(["x1", "x2"], dtype=object)})
    path = with_seen.save(tmp_path / "ds")
    assert {"seen.npz", "dropped_users.parquet"} <= {p.name for p in path.iterdir()}
    loaded = Dataset.load(path)
    assert loaded.seen.dtype == np.bool_ and (loaded.seen != with_seen.seen).nnz == 0
    assert loaded.raw_user_ids.tolist() == [*strong.user_ids.tolist(), "x1", "x2"]
    assert loaded.for_refit().seen is loaded.seen
    # a dataset built without the raw log (no seen pairs) loads without them
    plain = Dataset.load(strong.save(tmp_path / "plain"))
    assert plain.seen is None and len(plain.dropped_user_ids) == 0
    assert_same(plain, strong)
    bad = Dataset(**{**with_seen.__dict__, "seen": seen[:-1].tocsr()})
    with pytest.raises(RecvaeError, match=r"dataset seen: shape .*expected \(\d+, \d+\)"):
        bad.save(tmp_path / "bad")


def test_training_history_leaves_out_the_targets(strong: Dataset, weak: Dataset) -> None:
    # strong: both parts' targets; weak: the test targets (validation targets are training rows)
    for ds, targets in ((strong, strong.validation.holdout.nnz + strong.test.holdout.nnz),
                        (weak, weak.test.holdout.nnz)):
        users, full = ds.full_history()
        t_users, train = ds.training_history()
        assert set(t_users.tolist()) <= set(users.tolist())
        assert (train > full[np.searchsorted(users, t_users)]).nnz == 0  # a subset
        assert full.nnz - train.nnz == targets
    users, train = strong.training_history()
    rows = np.searchsorted(users, strong.test.users)
    assert (train[rows] != strong.test.fold_in).nnz == 0  # evaluation users: their fold-in


def test_load_with_a_missing_file(strong: Dataset, tmp_path: Path) -> None:
    path = strong.save(tmp_path / "ds")
    (path / "test_holdout.npz").unlink()
    with pytest.raises(RecvaeError, match=r"test_holdout\.npz"):
        Dataset.load(path)


def test_manifest_records_every_file(strong: Dataset, tmp_path: Path) -> None:
    path = strong.save(tmp_path / "ds")
    files = json.loads((path / "manifest.json").read_text())["files"]
    assert set(files) == set(FILES) == {p.name for p in path.iterdir()} - {"manifest.json"}
    for name, entry in files.items():
        assert entry == {"bytes": (path / name).stat().st_size, "sha256": sha256_file(path / name)}


def test_tampered_files_are_refused(strong: Dataset, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = strong.save(tmp_path / "ds")
    train = path / "train.npz"
    good = train.read_bytes()
    train.write_bytes(good + b"\0")
    with pytest.raises(RecvaeError, match=r"train\.npz: [\d,]+ bytes, the manifest records [\d,]+"):
        Dataset.load(path)
    flipped = bytearray(good)
    flipped[-50] ^= 1
    train.write_bytes(bytes(flipped))
    with pytest.raises(RecvaeError, match=r"train\.npz: contents differ from the sha256"):
        Dataset.load(path)
    # a big file is re-hashed only when asked; its size is always checked
    monkeypatch.setattr(dataset_module, "ALWAYS_HASH_BYTES", 0)
    assert Dataset.load(path).n_items == strong.n_items
    with pytest.raises(RecvaeError, match=r"train\.npz: contents differ from the sha256"):
        Dataset.load(path, verify=True)


def test_edited_counts_are_refused(strong: Dataset, tmp_path: Path) -> None:
    path = strong.save(tmp_path / "ds")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["counts"]["test_users"] = True  # JSON true == 1 in Python: must not pass for a count
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RecvaeError, match=r"manifest\.json: counts\.test_users is True but the "
                       r"dataset's arrays give 20"):
        Dataset.load(path)


# ------------------------------------------------------------------ helpers
@pytest.mark.parametrize("kind", ["strong", "weak"])
def test_full_history_is_the_union_of_all_parts(
    kind: str, request: pytest.FixtureRequest, positives: pd.DataFrame
) -> None:
    ds: Dataset = request.getfixturevalue(kind)
    users, full = ds.full_history()
    assert full.shape == (len(users), ds.n_items)
    assert (full.data == 1.0).all()  # binary even where the parts overlap (weak: test fold-in)
    rows, cols = full.nonzero()
    got = set(zip(ds.user_ids[users[rows]].tolist(), ds.item_ids[cols].tolist(), strict=True))
    df = positives.assign(user="u" + positives["user"].astype(str)) if kind == "strong" else positives
    known = df[df["item"].isin(set(ds.item_ids))]
    assert got == set(zip(known["user"].tolist(), known["item"].tolist(), strict=True))
    assert full.nnz == len(known)
    assert set(users.tolist()) == set(np.flatnonzero(np.isin(ds.user_ids, known["user"].unique())))


def test_summary_counts(strong: Dataset, weak: Dataset, positives: pd.DataFrame) -> None:
    s = strong.summary()
    assert s["protocol"] == "strong"
    assert s["users"] == positives["user"].nunique()
    assert s["items"] == strong.n_items
    assert s["train_users"] == s["users"] - 40
    assert s["validation_users"] == s["test_users"] == 20
    assert s["interactions"] == len(positives) - strong.manifest["drops"]["unknown_items"]
    assert s["test_holdout_interactions"] == strong.test.holdout.nnz
    assert s["test_users_with_targets"] == int((np.diff(strong.test.holdout.indptr) > 0).sum())
    assert 0 < s["test_users_with_targets"] <= 20
    assert s["density"] == pytest.approx(s["interactions"] / (s["users"] * s["items"]))
    w = weak.summary()
    assert w["protocol"] == "weak"
    assert w["train_users"] == w["validation_users"] == w["test_users"] == w["users"]
    assert w["interactions"] == len(positives) - weak.manifest["drops"]["unknown_items"]
    assert w["validation_fold_in_interactions"] == w["train_interactions"]


def test_part_lookup(strong: Dataset) -> None:
    assert strong.part("test") is strong.test
    with pytest.raises(RecvaeError, match="unknown split part 'train'"):
        strong.part("train")


@pytest.mark.parametrize("kind", ["strong", "weak"])
def test_for_refit_moves_validation_into_training(kind: str, request: pytest.FixtureRequest) -> None:
    ds: Dataset = request.getfixturevalue(kind)

    def pairs(users: np.ndarray, m: sp.csr_matrix) -> set[tuple[int, int]]:
        rows, cols = m.nonzero()
        return set(zip(users[rows].tolist(), cols.tolist(), strict=True))

    refit = ds.for_refit()
    v = ds.validation
    expected = pairs(ds.train_users, ds.train) | pairs(v.users, v.fold_in) | pairs(v.users, v.holdout)
    assert pairs(refit.train_users, refit.train) == expected
    assert refit.train.nnz == len(expected) and (refit.train.data == 1.0).all()
    assert not pairs(refit.train_users, refit.train) & pairs(ds.test.users, ds.test.holdout)
    assert refit.validation.n_users == 0 and refit.validation.holdout.nnz == 0
    assert refit.test is ds.test and refit.manifest["refit"] is True
    assert refit.protocol == ds.protocol
    if kind == "weak":  # the refit training rows are the test fold-in: the whole known history
        assert pairs(refit.train_users, refit.train) == pairs(ds.test.users, ds.test.fold_in)
    else:  # the validation users join the training users
        assert len(refit.train_users) == len(ds.train_users) + v.n_users
