"""Ingestion: read → preprocess → split → Dataset on disk, reused when nothing changed.

The dataset also records every (user, item) pair of the raw log over its items, whatever the
value (``Dataset.seen``), so recommendations can exclude what a user rated low or what
preprocessing dropped.

The dataset directory's manifest records a cache key (hash of the source files' SHA-256 and of
every parameter); a later ingest with the same inputs loads it instead of recomputing. It also
records every interaction dropped on the way, by reason (``drops``, see :func:`drop_lines`).
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
from recvae.io import read_json, remove_stale, sha256_file

log = logging.getLogger(__name__)

# What each key of a manifest's ``drops`` counts, for the lines printed at ingest.
_DROP_REASONS = {
    "below_threshold": "with a value not above preprocess.threshold ({threshold})",
    "duplicates": "repeating a (user, item) pair (the latest kept)",
    "min_item_users": "of items with fewer than preprocess.min_item_users = {min_item_users} users",
    "min_user_items": "of users with fewer than preprocess.min_user_items = {min_user_items} items",
    "unknown_items": "in validation/test on items that no training interaction has (outside the "
    "model's item vocabulary)",
}


def drop_lines(manifest: dict[str, Any]) -> list[str]:
    """One line per reason that dropped interactions: the count, the share of the raw log and why.

    Example::

        for line in drop_lines(dataset.manifest):
            print(line)   # dropped 48,580 interactions (48.2 %) with a value not above ...
    """
    drops = manifest.get("drops") or {}
    raw = manifest.get("raw_interactions") or 0
    params = {"threshold": None, "min_item_users": 0, "min_user_items": 0,
              **(manifest.get("preprocess") or {})}
    lines = []
    for key, n in drops.items():
        if not n:
            continue
        share = f" ({100 * n / raw:.1f} %)" if raw else ""
        reason = _DROP_REASONS.get(key, key).format(**params)
        lines.append(f"dropped {n:,} interactions{share} {reason}")
    return lines

def source_digest(path: str | Path) -> dict[str, str]:
    """SHA-256 of the source file, or of every file under a source directory."""
    p = Path(path)
    if p.is_file():
        files = {p.name: p}
    elif p.is_dir():
        files = {str(f.relative_to(p)): f for f in sorted(p.rglob("*")) if f.is_file()}
    else:
        raise RecvaeError(f"{p}: no such file or folder; expected the raw log (data.path / --path)")
    digest = {}
    for name, f in files.items():
        try:
            digest[name] = sha256_file(f)
        except OSError as e:  # unreadable: permissions, an I/O error
            raise RecvaeError(f"{f}: cannot read ({e.strerror or e}); expected the raw log") from None
    return digest


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
    out = data.out_dir
    remove_stale(out)  # what a killed ingest left beside it
    digest = source_digest(data.path)
    key = cache_key(data, digest)
    manifest_path = out / "manifest.json"
    if not force and manifest_path.is_file():
        try:
            cached = read_json(manifest_path).get("key")
        except RecvaeError:
            cached = None
        if cached == key:
            try:
                # Re-hash everything: this dataset is about to feed hours of training, and
                # hashing it costs less than the source digest above.
                dataset = Dataset.load(out, verify=True)
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
    drops: dict[str, int] = {}
    df = preprocess(
        raw,
        threshold=pp.threshold,
        min_item_users=pp.min_item_users,
        min_user_items=pp.min_user_items,
        iterate=pp.iterate,
        allow_negative=pp.allow_negative,
        source=str(data.path),
        drops=drops,
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
            "drops": {**drops, **ds.manifest.get("drops", {})},
            "timings": timings,
        }
    )
    t4 = time.perf_counter()
    ds.save(out)
    timings["save_seconds"] = time.perf_counter() - t4
    return ds, False
