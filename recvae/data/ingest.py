"""Ingestion: read → preprocess → split → Dataset on disk, reused when nothing changed.

The dataset also records every (user, item) pair of the raw log over its items, whatever the
value (``Dataset.seen``), so recommendations can exclude what a user rated low or what
preprocessing dropped.

The dataset directory's manifest records a cache key (hash of the source files' SHA-256 and of
every parameter); a later ingest with the same inputs loads it instead of recomputing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recvae.data import split as splits
from recvae.data.dataset import FORMAT_VERSION, Dataset
from recvae.data.preprocess import preprocess
from recvae.data.spec import DataConfig
from recvae.data.sources import read_source
from recvae.errors import RecvaeError
from recvae.io import sha256_file

log = logging.getLogger(__name__)

def source_digest(path: str | Path) -> dict[str, str]:
    """SHA-256 of the source file, or of every file under a source directory."""
    p = Path(path)
    if p.is_file():
        return {p.name: sha256_file(p)}
    if p.is_dir():
        return {
            str(f.relative_to(p)): sha256_file(f) for f in sorted(p.rglob("*")) if f.is_file()
        }
    raise RecvaeError(f"{p}: no such file or folder; expected the raw log (data.path / --path)")


def cache_key(data: DataConfig, digest: dict[str, str]) -> str:
    """Hash of the source contents and every parameter that shapes the dataset."""
    payload = {
        "format": FORMAT_VERSION,
        "source": data.source,
        "options": data.options,
        "digest": digest,
        "preprocess": asdict(data.preprocess),
        "split": asdict(data.split),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def seen_pairs(
    raw: pd.DataFrame, user_ids: np.ndarray, item_ids: np.ndarray
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Every (user, item) pair of the raw log, whatever its value: (bool CSR, dropped user ids).

    Rows are ``user_ids`` (the dataset's users, in order) followed by the users of the log that
    preprocessing dropped (sorted ids, returned); columns are ``item_ids``, and pairs on other
    items are left out (no model can recommend them).
    """
    users = raw["user"]
    rows = pd.Index(user_ids).get_indexer(users)
    dropped = rows < 0
    codes, dropped_ids = pd.factorize(users[dropped], sort=True)
    rows[dropped] = len(user_ids) + codes
    cols = pd.Index(item_ids).get_indexer(raw["item"])
    keep = cols >= 0
    seen = sp.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.bool_), (rows[keep], cols[keep])),
        shape=(len(user_ids) + len(dropped_ids), len(item_ids)),
    )
    seen.sum_duplicates()  # a user who rated an item twice: one pair
    return seen, np.asarray(dropped_ids)


def ingest(data: DataConfig, *, force: bool = False) -> tuple[Dataset, bool]:
    """Build (or reuse) the dataset described by ``data``; returns (dataset, reused)."""
    digest = source_digest(data.path)
    key = cache_key(data, digest)
    out = data.out_dir
    manifest_path = out / "manifest.json"
    if not force and manifest_path.is_file():
        try:
            cached = json.loads(manifest_path.read_text()).get("key")
        except json.JSONDecodeError:
            cached = None
        if cached == key:
            try:
                dataset = Dataset.load(out)
            except RecvaeError as e:  # damaged since it was written: build it again
                log.warning("rebuilding %s: %s", out, e)
            else:
                log.info("reusing %s (same source and parameters)", out)
                return dataset, True

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    raw = read_source(data.source, data.path, **data.options)
    timings["read_seconds"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    pp = data.preprocess
    df = preprocess(
        raw,
        threshold=pp.threshold,
        min_item_users=pp.min_item_users,
        min_user_items=pp.min_user_items,
        iterate=pp.iterate,
        source=str(data.path),
    )
    timings["preprocess_seconds"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    ds = splits.apply_split(df, data.split)
    n_positives = len(df)
    del df
    timings["split_seconds"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    # what recommendations must exclude: every pair of the log, not only the positives
    ds.seen, ds.dropped_user_ids = seen_pairs(raw, ds.user_ids, ds.item_ids)
    timings["seen_seconds"] = time.perf_counter() - t3
    ds.manifest.update(
        {
            "name": data.dataset_name,
            "source": data.source,
            "path": str(data.path),
            "options": data.options,
            "source_sha256": digest,
            "preprocess": asdict(data.preprocess),
            "key": key,
            "raw_interactions": len(raw),
            "raw_users": ds.seen.shape[0],
            "dropped_users": len(ds.dropped_user_ids),
            "positive_interactions": n_positives,
            "timings": timings,
        }
    )
    t4 = time.perf_counter()
    ds.save(out)
    timings["save_seconds"] = time.perf_counter() - t4
    return ds, False
