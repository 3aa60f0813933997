"""The Dataset on disk: CSR matrices per part, original-id maps, and a manifest.

Layout of a dataset directory::

    manifest.json                  source sha256, parameters, counts, drops, cache key, and
                                   the size and sha256 of every file below
    users.parquet, items.parquet   index → original id
    train.npz                      training users × items (CSR, float32)
    train_users.npy                row → user index
    {validation,test}_fold_in.npz  what the model sees for evaluation users
    {validation,test}_holdout.npz  what it must find
    {validation,test}_users.npy    row → user index
    seen.npz                       every (user, item) pair of the raw log, whatever its value or
                                   threshold, over the items (bool CSR); rows: the users of
                                   users.parquet, then those of dropped_users.parquet
    dropped_users.parquet          users of the raw log that preprocessing dropped

Strong generalization (Liang et al.): evaluation users are disjoint from training users.
Weak generalization (random / temporal / predefined splits): every user is a training user; the
validation part's fold-in is the training row, and the test part's fold-in is the full training
history (training + validation items), so known items are masked at test time.

A dataset that changed after it was written is refused on load: every file's size is checked
against the manifest, small files are re-hashed every time and the matrices too with
``verify=True`` (``recvae evaluate-split --verify``); the manifest's counts are checked against
the arrays.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recvae.errors import RecvaeError
from recvae.io import (
    atomic_dir,
    load_npy,
    load_npz,
    read_json,
    read_parquet_column,
    save_npy,
    sha256_file,
)

# 3: seen.npz and dropped_users.parquet (manifest "seen": true) beside format 2's per-file sizes
# and sha256 ("files") and drop counts ("drops"). Older datasets are re-ingested.
FORMAT_VERSION = 3
SEEN_FILES = ("seen.npz", "dropped_users.parquet")
PART_NAMES = ("validation", "test")
FILES = (
    "train.npz", "train_users.npy", "users.parquet", "items.parquet",
    *(f"{name}_{kind}" for name in PART_NAMES for kind in ("fold_in.npz", "holdout.npz", "users.npy")),
)
#: Files up to this size are re-hashed on every load; larger ones with ``verify=True``.
ALWAYS_HASH_BYTES = 4 << 20


@dataclass(frozen=True)
class Part:
    """Evaluation users: the history the model sees (``fold_in``) and the targets (``holdout``).

    Both are CSR of shape (n_rows, n_items); ``users[r]`` is row r's index into ``user_ids``.
    Rows with an empty ``holdout`` have no targets and are skipped by the metrics.
    """

    fold_in: sp.csr_matrix
    holdout: sp.csr_matrix
    users: np.ndarray

    @property
    def n_users(self) -> int:
        return self.fold_in.shape[0]


@dataclass
class Dataset:
    """Sparse user-item matrices of one split, with the maps back to the original ids.

    Example::

        ds = Dataset.load("runs/data/ml-latest-small")
        ds.train            # CSR (n_train_users, n_items)
        ds.test.fold_in     # CSR (n_test_users, n_items)

    ``seen`` (bool CSR) records every pair of the raw log, positive or not, for the users of
    ``user_ids`` followed by ``dropped_user_ids`` (users of the log that preprocessing dropped);
    recommendations exclude it. None for datasets built in memory or by format 1.
    """

    train: sp.csr_matrix
    train_users: np.ndarray
    validation: Part
    test: Part
    user_ids: np.ndarray
    item_ids: np.ndarray
    manifest: dict[str, Any] = field(default_factory=dict)
    seen: sp.csr_matrix | None = None
    dropped_user_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))

    @property
    def n_items(self) -> int:
        return self.train.shape[1]

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def protocol(self) -> str:
        """``strong`` (disjoint evaluation users) or ``weak`` (held-out items of training users)."""
        return self.manifest.get("protocol", "strong")

    def part(self, name: str) -> Part:
        """The ``validation`` or ``test`` part."""
        if name not in PART_NAMES:
            raise RecvaeError(f"unknown split part {name!r}: expected one of {', '.join(PART_NAMES)}")
        return getattr(self, name)

    @property
    def raw_user_ids(self) -> np.ndarray:
        """Every user of the raw log: ``user_ids``, then ``dropped_user_ids`` (the rows of ``seen``)."""
        if len(self.dropped_user_ids) == 0:
            return self.user_ids
        return np.concatenate([self.user_ids, self.dropped_user_ids.astype(self.user_ids.dtype)])

    def full_history(self) -> tuple[np.ndarray, sp.csr_matrix]:
        """Every known positive per user: (user indices, binary CSR of shape (n, n_items)).

        This is what production recommendations are computed from.
        """
        return self._union(self.validation, self.test)

    def training_history(self) -> tuple[np.ndarray, sp.csr_matrix]:
        """What models are given per user: training rows and evaluation users' fold-in, without
        the held-out targets; (user indices, binary CSR of shape (n, n_items))."""
        return self._union(self.validation, self.test, holdout=False)

    def for_refit(self) -> Dataset:
        """This split with every validation interaction moved into training and no validation targets.

        After model selection on the validation part, a model refitted on this dataset has seen
        everything except the test targets; ``test`` is unchanged. Weak splits: each training
        row gains its validation items; strong splits: the validation users become training users.
        """
        users, train = self._union(self.validation)
        empty = sp.csr_matrix((0, self.n_items), dtype=np.float32)
        return Dataset(
            train=train,
            train_users=users,
            validation=Part(fold_in=empty, holdout=empty.copy(), users=np.zeros(0, dtype=np.int64)),
            test=self.test,
            user_ids=self.user_ids,
            item_ids=self.item_ids,
            manifest={**self.manifest, "refit": True},
            seen=self.seen,
            dropped_user_ids=self.dropped_user_ids,
        )

    def _union(self, *parts: Part, holdout: bool = True) -> tuple[np.ndarray, sp.csr_matrix]:
        """(user indices, binary CSR) of the training rows plus the fold-in (and ``holdout``) of
        ``parts``, one row per user that has any of them."""
        mats = [(self.train_users, self.train)]
        for p in parts:
            mats += [(p.users, p.fold_in)] + ([(p.users, p.holdout)] if holdout else [])
        rows = np.concatenate([np.repeat(u, np.diff(m.indptr)) for u, m in mats])
        cols = np.concatenate([m.indices for _, m in mats])
        full = sp.csr_matrix(
            (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(self.n_users, self.n_items)
        )
        full.sum_duplicates()
        full.data[:] = 1.0
        users = np.flatnonzero(np.diff(full.indptr) > 0)
        return users, full[users]

    def summary(self) -> dict[str, Any]:
        """Counts per part, like Table 1 of Liang et al."""
        out: dict[str, Any] = {
            "protocol": self.protocol,
            "users": self.n_users,
            "items": self.n_items,
            "train_users": self.train.shape[0],
            "train_interactions": int(self.train.nnz),
        }
        for name in PART_NAMES:
            p = self.part(name)
            out[f"{name}_users"] = p.n_users
            out[f"{name}_users_with_targets"] = int((np.diff(p.holdout.indptr) > 0).sum())
            out[f"{name}_fold_in_interactions"] = int(p.fold_in.nnz)
            out[f"{name}_holdout_interactions"] = int(p.holdout.nnz)
        if self.protocol == "weak":
            total = self.test.fold_in.nnz + self.test.holdout.nnz
        else:
            total = self.train.nnz + sum(p.fold_in.nnz + p.holdout.nnz for p in (self.validation, self.test))
        out["interactions"] = int(total)
        out["density"] = total / max(1, self.n_users * self.n_items)
        return out

    def digest(self) -> str:
        """SHA-256 of the content: every matrix's arrays (``seen`` too), the users of each part
        and the id maps (values and types). Two ingests of the same log give the same digest,
        whatever the layout of the files it was read from."""
        h = hashlib.sha256()

        def add(a: np.ndarray) -> None:
            if a.dtype == object:  # text ids
                a = np.array([str(v) for v in a], dtype=np.str_)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(np.ascontiguousarray(a).tobytes())

        for m in (self.train, self.validation.fold_in, self.validation.holdout, self.test.fold_in,
                  self.test.holdout):
            h.update(str(m.shape).encode())
            for a in (m.indptr, m.indices, m.data):
                add(a)
        for a in (self.train_users, self.validation.users, self.test.users, self.user_ids,
                  self.item_ids):
            add(np.asarray(a))
        if self.seen is not None:
            h.update(f"seen{self.seen.shape}".encode())
            for a in (self.seen.indptr, self.seen.indices, self.seen.data):
                add(a)
            # an empty id column has no type of its own (object in memory, whatever on disk)
            if len(self.dropped_user_ids):
                add(np.asarray(self.dropped_user_ids))
        return h.hexdigest()

    # ------------------------------------------------------------------ disk
    def save(self, path: str | os.PathLike) -> Path:
        """Write the dataset to ``path`` atomically (a crash leaves no half-written directory)."""
        self._check_shapes()
        with atomic_dir(path) as tmp:
            # copy=False: a float32 matrix is written as it is, not copied first (at 50M
            # interactions a copy of the training matrix would be the largest allocation of ingest)
            sp.save_npz(tmp / "train.npz", self.train.astype(np.float32, copy=False), compressed=False)
            save_npy(tmp / "train_users.npy", self.train_users.astype(np.int64))
            for name in PART_NAMES:
                p = self.part(name)
                for kind, m in (("fold_in", p.fold_in), ("holdout", p.holdout)):
                    sp.save_npz(tmp / f"{name}_{kind}.npz", m.astype(np.float32, copy=False),
                                compressed=False)
                save_npy(tmp / f"{name}_users.npy", p.users.astype(np.int64))
            pd.DataFrame({"user_id": self.user_ids}).to_parquet(tmp / "users.parquet", index=False)
            pd.DataFrame({"item_id": self.item_ids}).to_parquet(tmp / "items.parquet", index=False)
            if self.seen is not None:
                sp.save_npz(tmp / "seen.npz", self.seen.astype(np.bool_, copy=False), compressed=False)
                pd.DataFrame({"user_id": self.dropped_user_ids}).to_parquet(
                    tmp / "dropped_users.parquet", index=False
                )
            names = FILES + (SEEN_FILES if self.seen is not None else ())
            files = {
                f: {"bytes": (tmp / f).stat().st_size, "sha256": sha256_file(tmp / f)} for f in names
            }
            manifest = {
                **self.manifest, "format": FORMAT_VERSION, "seen": self.seen is not None,
                "counts": self.summary(), "files": files,
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        self.manifest = manifest
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, verify: bool = False) -> Dataset:
        """Read a dataset written by :meth:`save`.

        Every file's size is checked against the manifest, and its sha256 too when it is small
        (:data:`ALWAYS_HASH_BYTES`) or ``verify`` is set; the manifest's counts are checked
        against the arrays. Any difference is a RecvaeError naming the file.
        """
        root = Path(path)
        mpath = root / "manifest.json"
        if not mpath.is_file():
            raise RecvaeError(f"{root}: not a recvae dataset (no manifest.json); run `recvae ingest` first")
        manifest = read_json(mpath, "a recvae dataset manifest")
        version = manifest.get("format")
        if version != FORMAT_VERSION:
            raise RecvaeError(
                f"{mpath}: dataset format {version!r}, expected {FORMAT_VERSION}; re-ingest"
            )
        has_seen = bool(manifest.get("seen"))  # written when the raw log was known
        names = FILES + (SEEN_FILES if has_seen else ())
        missing = [f for f in names if not (root / f).is_file()]
        if missing:
            raise RecvaeError(f"{root}: incomplete dataset, missing {', '.join(missing)}; re-ingest")
        _check_files(root, manifest, names, verify)

        def csr(name: str) -> sp.csr_matrix:
            return load_npz(root / f"{name}.npz", _EXPECTED).astype(np.float32)

        def users(name: str) -> np.ndarray:
            return load_npy(root / f"{name}_users.npy", _EXPECTED)

        parts = {
            name: Part(fold_in=csr(f"{name}_fold_in"), holdout=csr(f"{name}_holdout"), users=users(name))
            for name in PART_NAMES
        }
        ds = cls(
            train=csr("train"),
            train_users=users("train"),
            validation=parts["validation"],
            test=parts["test"],
            user_ids=read_parquet_column(root / "users.parquet", "user_id"),
            item_ids=read_parquet_column(root / "items.parquet", "item_id"),
            manifest=manifest,
        )
        if has_seen:
            ds.seen = load_npz(root / "seen.npz", _EXPECTED).astype(np.bool_, copy=False)
            ds.dropped_user_ids = read_parquet_column(root / "dropped_users.parquet", "user_id")
        ds._check_shapes(root)
        ds._check_counts(mpath)
        return ds

    def _check_counts(self, mpath: Path) -> None:
        """The manifest's counts must be those of the arrays (an edited manifest is refused)."""
        recorded = self.manifest.get("counts")
        if not isinstance(recorded, dict):
            raise RecvaeError(f"{mpath}: no 'counts' mapping; re-ingest")
        for key, actual in self.summary().items():
            value = recorded.get(key)
            # JSON round-trips these ints, strings and floats exactly; the type check keeps
            # true from passing for 1
            if type(value) is not type(actual) or value != actual:
                raise RecvaeError(
                    f"{mpath}: counts.{key} is {value!r} but the dataset's arrays give {actual!r} "
                    "(the manifest was edited or belongs to other files); re-ingest"
                )

    def _check_shapes(self, root: Path | None = None) -> None:
        where = f"{root}: " if root is not None else ""
        n_items = len(self.item_ids)
        mats = {"train": self.train}
        for name in PART_NAMES:
            p = self.part(name)
            mats[f"{name}_fold_in"], mats[f"{name}_holdout"] = p.fold_in, p.holdout
            if not (p.fold_in.shape[0] == p.holdout.shape[0] == len(p.users)):
                raise RecvaeError(f"{where}dataset part {name!r}: fold-in, holdout and users disagree in rows")
        for name, m in mats.items():
            if m.shape[1] != n_items:
                raise RecvaeError(f"{where}dataset {name}: {m.shape[1]} columns, expected {n_items} items")
        if self.train.shape[0] != len(self.train_users):
            raise RecvaeError(f"{where}dataset train: rows and train_users disagree")
        for name, users in (("train", self.train_users), *((n, self.part(n).users) for n in PART_NAMES)):
            if users.ndim != 1 or users.dtype.kind not in "iu" or (
                len(users) and (users.min() < 0 or users.max() >= self.n_users)
            ):
                raise RecvaeError(
                    f"{where}dataset {name}_users: expected indices into the {self.n_users} user ids"
                )
        if self.seen is not None:
            expected = (self.n_users + len(self.dropped_user_ids), n_items)
            if self.seen.shape != expected:
                raise RecvaeError(
                    f"{where}dataset seen: shape {self.seen.shape}, expected {expected} (users + "
                    "dropped users, items)"
                )


_EXPECTED = "a file written by `recvae ingest` (re-ingest)"


def _check_files(root: Path, manifest: dict[str, Any], names: tuple[str, ...], verify: bool) -> None:
    """Each file's size, and sha256 where cheap or asked, against ``manifest["files"]``."""
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise RecvaeError(f"{root / 'manifest.json'}: no 'files' mapping (sizes and sha256); re-ingest")
    for name in names:
        entry = files.get(name)
        path = root / name
        if not isinstance(entry, dict) or not isinstance(entry.get("bytes"), int):
            raise RecvaeError(f"{root / 'manifest.json'}: files.{name}: no size and sha256; re-ingest")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise RecvaeError(
                f"{path}: {size:,} bytes, the manifest records {entry['bytes']:,} (truncated or "
                "replaced since ingest); re-ingest"
            )
        if (verify or size <= ALWAYS_HASH_BYTES) and sha256_file(path) != entry.get("sha256"):
            raise RecvaeError(
                f"{path}: contents differ from the sha256 in the manifest (modified since ingest); "
                "re-ingest"
            )
