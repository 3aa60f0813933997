"""Ingestion: read → preprocess → split → Dataset on disk, reused when nothing changed.

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

from recvae.data import split as splits
from recvae.data.dataset import FORMAT_VERSION, Dataset
from recvae.data.preprocess import preprocess_interactions
from recvae.data.spec import DataConfig
from recvae.data.tables import read_interactions
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
    pp = data.preprocess
    t0 = time.perf_counter()
    # The log is read straight into compact arrays (8 bytes a positive interaction), binarized
    # as it streams; preprocessing and the split then work on those arrays in place.
    interactions = read_interactions(data.source, data.path, threshold=pp.threshold, **data.options)
    raw_interactions = interactions.rows_read
    timings["read_seconds"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    preprocess_interactions(
        interactions,
        min_item_users=pp.min_item_users,
        min_user_items=pp.min_user_items,
        iterate=pp.iterate,
        threshold=pp.threshold,
        source=str(data.path),
    )
    positives = len(interactions)
    if not splits.uses_timestamps(data.split):
        interactions.drop_timestamps()  # they only chose which duplicate stays
    timings["preprocess_seconds"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    ds = splits.apply_split(interactions, data.split)
    del interactions  # the strong split spent its buffer on the training matrix
    timings["split_seconds"] = time.perf_counter() - t2
    ds.manifest.update(
        {
            "name": data.dataset_name,
            "source": data.source,
            "path": str(data.path),
            "options": data.options,
            "source_sha256": digest,
            "preprocess": asdict(data.preprocess),
            "key": key,
            "raw_interactions": raw_interactions,
            "positive_interactions": positives,
            "timings": timings,
        }
    )
    t3 = time.perf_counter()
    ds.save(out)
    timings["save_seconds"] = time.perf_counter() - t3
    return ds, False
