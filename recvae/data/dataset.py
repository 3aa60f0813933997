"""The Dataset on disk: CSR matrices per part, original-id maps, and a manifest.

Layout of a dataset directory::

    manifest.json                  source sha256, parameters, counts, cache key
    users.parquet, items.parquet   index → original id
    train.npz                      training users × items (CSR, float32)
    train_users.npy                row → user index
    {validation,test}_fold_in.npz  what the model sees for evaluation users
    {validation,test}_holdout.npz  what it must find
    {validation,test}_users.npy    row → user index

Strong generalization (Liang et al.): evaluation users are disjoint from training users.
Weak generalization (random / temporal / predefined splits): every user is a training user; the
validation part's fold-in is the training row, and the test part's fold-in is the full training
history (training + validation items), so known items are masked at test time.
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
from recvae.io import atomic_dir

FORMAT_VERSION = 1
PART_NAMES = ("validation", "test")


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
    """

    train: sp.csr_matrix
    train_users: np.ndarray
    validation: Part
    test: Part
    user_ids: np.ndarray
    item_ids: np.ndarray
    manifest: dict[str, Any] = field(default_factory=dict)

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

    def full_history(self) -> tuple[np.ndarray, sp.csr_matrix]:
        """Every known interaction per user: (user indices, binary CSR of shape (n, n_items)).

        This is what production recommendations are computed from.
        """
        return self._union(self.validation, self.test)

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
        )

    def _union(self, *parts: Part) -> tuple[np.ndarray, sp.csr_matrix]:
        """(user indices, binary CSR) of the training rows plus the fold-in and holdout of ``parts``,
        one row per user that has any of them."""
        mats = [(self.train_users, self.train)]
        for p in parts:
            mats += [(p.users, p.fold_in), (p.users, p.holdout)]
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
        """SHA-256 of the content: every matrix's arrays, the users of each part and both id maps
        (values and types). Two ingests of the same log give the same digest, whatever the layout
        of the files it was read from."""
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
        return h.hexdigest()

    # ------------------------------------------------------------------ disk
    def save(self, path: str | os.PathLike) -> Path:
        """Write the dataset to ``path`` atomically (a crash leaves no half-written directory)."""
        self._check_shapes()
        with atomic_dir(path) as tmp:
            # copy=False: a float32 matrix is written as it is, not copied first (at 50M
            # interactions a copy of the training matrix would be the largest allocation of ingest)
            sp.save_npz(tmp / "train.npz", self.train.astype(np.float32, copy=False), compressed=False)
            np.save(tmp / "train_users.npy", self.train_users.astype(np.int64))
            for name in PART_NAMES:
                p = self.part(name)
                for kind, m in (("fold_in", p.fold_in), ("holdout", p.holdout)):
                    sp.save_npz(tmp / f"{name}_{kind}.npz", m.astype(np.float32, copy=False),
                                compressed=False)
                np.save(tmp / f"{name}_users.npy", p.users.astype(np.int64))
            pd.DataFrame({"user_id": self.user_ids}).to_parquet(tmp / "users.parquet", index=False)
            pd.DataFrame({"item_id": self.item_ids}).to_parquet(tmp / "items.parquet", index=False)
            manifest = {"format": FORMAT_VERSION, **self.manifest, "counts": self.summary()}
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        self.manifest = manifest
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Dataset:
        """Read a dataset written by :meth:`save`."""
        root = Path(path)
        mpath = root / "manifest.json"
        if not mpath.is_file():
            raise RecvaeError(f"{root}: not a recvae dataset (no manifest.json); run `recvae ingest` first")
        try:
            manifest = json.loads(mpath.read_text())
        except json.JSONDecodeError as e:
            raise RecvaeError(f"{mpath}: invalid JSON ({e})") from None
        if manifest.get("format") != FORMAT_VERSION:
            raise RecvaeError(
                f"{mpath}: dataset format {manifest.get('format')!r}, expected {FORMAT_VERSION}; re-ingest"
            )
        files = ["train.npz", "train_users.npy", "users.parquet", "items.parquet"] + [
            f"{name}_{kind}" for name in PART_NAMES for kind in ("fold_in.npz", "holdout.npz", "users.npy")
        ]
        missing = [f for f in files if not (root / f).is_file()]
        if missing:
            raise RecvaeError(f"{root}: incomplete dataset, missing {', '.join(missing)}; re-ingest")

        def csr(name: str) -> sp.csr_matrix:
            return sp.load_npz(root / f"{name}.npz").tocsr().astype(np.float32)

        parts = {
            name: Part(
                fold_in=csr(f"{name}_fold_in"),
                holdout=csr(f"{name}_holdout"),
                users=np.load(root / f"{name}_users.npy"),
            )
            for name in PART_NAMES
        }
        ds = cls(
            train=csr("train"),
            train_users=np.load(root / "train_users.npy"),
            validation=parts["validation"],
            test=parts["test"],
            user_ids=pd.read_parquet(root / "users.parquet")["user_id"].to_numpy(),
            item_ids=pd.read_parquet(root / "items.parquet")["item_id"].to_numpy(),
            manifest=manifest,
        )
        ds._check_shapes()
        return ds

    def _check_shapes(self) -> None:
        n_items = len(self.item_ids)
        mats = {"train": self.train}
        for name in PART_NAMES:
            p = self.part(name)
            mats[f"{name}_fold_in"], mats[f"{name}_holdout"] = p.fold_in, p.holdout
            if not (p.fold_in.shape[0] == p.holdout.shape[0] == len(p.users)):
                raise RecvaeError(f"dataset part {name!r}: fold-in, holdout and users disagree in rows")
        for name, m in mats.items():
            if m.shape[1] != n_items:
                raise RecvaeError(f"dataset {name}: {m.shape[1]} columns, expected {n_items} items")
        if self.train.shape[0] != len(self.train_users):
            raise RecvaeError("dataset train: rows and train_users disagree")
