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
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recvae.data import split as splits
from recvae.data.dataset import FORMAT_VERSION, Dataset
from recvae.data.interactions import Interactions, SeenBuilder
from recvae.data.preprocess import preprocess_interactions
from recvae.data.spec import DataConfig, PreprocessConfig, SplitConfig
from recvae.data.tables import read_interactions, read_seen
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
    items are left out (no model can recommend them). :func:`ingest` builds the same from a
    second read of the source (:func:`recvae.data.tables.read_seen`).
    """
    return SeenBuilder.from_frame(raw, user_ids, item_ids)


def build_dataset(
    read: Callable[[], Interactions],
    read_seen: Callable[[np.ndarray, np.ndarray, int], tuple[sp.csr_matrix, np.ndarray]],
    pp: PreprocessConfig,
    split: SplitConfig,
    *,
    source: str = "the input",
) -> Dataset:
    """read → preprocess → split → seen pairs: the dataset :func:`ingest` saves, with the
    manifest entries its data gives (raw and positive counts, drops by reason, timings).

    ``read()`` gives the positives of the log (binarized as ``pp`` says); ``read_seen(user_ids,
    item_ids, rows)`` reads the log again for its pairs over the dataset's users and items, as
    :func:`recvae.data.tables.read_seen` (``rows``: how many the first read found).
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    interactions = read()
    raw_interactions = interactions.rows_read
    timings["read_seconds"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    drops: dict[str, int] = {}
    preprocess_interactions(
        interactions,
        min_item_users=pp.min_item_users,
        min_user_items=pp.min_user_items,
        iterate=pp.iterate,
        threshold=pp.threshold,
        source=source,
        drops=drops,
    )
    positives = len(interactions)
    if not splits.uses_timestamps(split):
        interactions.drop_timestamps()  # they only chose which duplicate stays
    timings["preprocess_seconds"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    ds = splits.apply_split(interactions, split)
    del interactions  # the strong split spent its buffer on the training matrix
    timings["split_seconds"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    # What recommendations must exclude: every pair of the log, not only the positives. A second
    # read of the source (user and item columns only) costs time, where keeping every raw pair
    # through preprocessing and the split would cost 8 bytes a raw row at the peak.
    ds.seen, ds.dropped_user_ids = read_seen(ds.user_ids, ds.item_ids, raw_interactions)
    timings["seen_seconds"] = time.perf_counter() - t3
    ds.manifest.update(
        {
            "raw_interactions": raw_interactions,
            "raw_users": ds.seen.shape[0],
            "dropped_users": len(ds.dropped_user_ids),
            "positive_interactions": positives,
            "drops": {**drops, **ds.manifest.get("drops", {})},
            "timings": timings,
        }
    )
    return ds


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

    pp = data.preprocess
    ds = build_dataset(
        # The log is read straight into compact arrays (8 bytes a positive interaction),
        # binarized as it streams; preprocessing and the split then work on them in place.
        lambda: read_interactions(
            data.source, data.path, threshold=pp.threshold, allow_negative=pp.allow_negative,
            **data.options,
        ),
        lambda user_ids, item_ids, rows: read_seen(
            data.source, data.path, user_ids, item_ids, rows=rows, **data.options
        ),
        pp,
        data.split,
        source=str(data.path),
    )
    ds.manifest.update(
        {
            "name": data.dataset_name,
            "source": data.source,
            "path": str(data.path),
            "options": data.options,
            "source_sha256": digest,
            "preprocess": asdict(data.preprocess),
            "key": key,
        }
    )
    timings = ds.manifest["timings"]
    t4 = time.perf_counter()
    ds.save(out)
    timings["save_seconds"] = time.perf_counter() - t4
    return ds, False
