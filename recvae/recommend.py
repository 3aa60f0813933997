"""Top-k recommendations for users' histories, in batches, written as files with original ids.

The full user × item score matrix is never held in memory: rows are scored ``batch_size`` at a
time, masked, reduced to their top k and streamed to the output file.

Example::

    model = load_model("runs/models/mult-vae")
    write_recommendations(model, Dataset.load("runs/data/ml-20m"), "topk.parquet", k=100)
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import scipy.sparse as sp
import torch

from recvae.batching import row_batches
from recvae.data.dataset import Dataset
from recvae.errors import RecvaeError
from recvae.evaluation import topk_masked
from recvae.io import atomic_file
from recvae.models.base import Recommender

COLUMNS = ("user_id", "rank", "item_id", "score")
Format = Literal["parquet", "csv"]


def iter_topk(
    model: Recommender,
    history: sp.csr_matrix,
    k: int,
    *,
    batch_size: int = 2000,
    exclude_seen: bool = True,
    show_progress: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(row, item, score)`` arrays batch by batch; see :func:`recommend_topk`."""
    _check_sizes(k, batch_size)
    history = history.tocsr()
    n_rows, n_items = history.shape
    k = min(k, n_items)
    batches = row_batches(n_rows, batch_size)
    if show_progress:
        from tqdm.auto import tqdm

        total = -(-n_rows // batch_size)
        batches = tqdm(batches, total=total, desc=f"top-{k} {model.name}", unit="batch")
    for rows in batches:
        fold_in = history[rows]
        scores = torch.from_numpy(model.score(fold_in))
        # model.score returns a new array: mask it in place rather than copying it
        idx, val = topk_masked(scores, fold_in if exclude_seen else None, k, inplace=True)
        idx, val = idx.numpy(), val.numpy()
        # -inf marks a slot left over when fewer than k items are unseen
        keep = np.isfinite(val)
        row_of = np.broadcast_to(np.arange(rows.start, rows.stop)[:, None], idx.shape)
        yield (
            row_of[keep].astype(np.int64),
            idx[keep].astype(np.int64),
            val[keep].astype(np.float32),
        )


def _check_sizes(k: int, batch_size: int) -> None:
    for name, value in (("k", k), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
            raise RecvaeError(f"{name} must be a positive integer, got {value!r}")


def recommend_topk(
    model: Recommender,
    history: sp.csr_matrix,
    k: int,
    *,
    batch_size: int = 2000,
    exclude_seen: bool = True,
    show_progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k items per row of ``history`` (CSR, n_rows × the model's items).

    Returns ``(row, item, score)`` int64/int64/float32 arrays in row order, then rank order
    (scores non-increasing). Items in a row's history are excluded when ``exclude_seen``; a row
    with fewer than ``k`` candidate items gets fewer entries.

    Example::

        rows, items, scores = recommend_topk(model, dataset.test.fold_in, k=10)
    """
    parts = list(
        iter_topk(
            model, history, k, batch_size=batch_size, exclude_seen=exclude_seen,
            show_progress=show_progress,
        )
    )
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    rows, items, scores = (np.concatenate(a) for a in zip(*parts, strict=True))
    return rows, items, scores


def infer_format(path: str | os.PathLike) -> Format:
    """``parquet`` or ``csv`` from a file name (``.parquet``, ``.pq``, ``.csv``, ``.csv.gz``)."""
    name = Path(path).name.lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    raise RecvaeError(
        f"{path}: cannot tell the output format from the file name; use a .parquet or .csv "
        "suffix or pass format='parquet'|'csv'"
    )


def select_users(dataset: Dataset, users: str | Sequence) -> np.ndarray:
    """Indices into ``dataset.user_ids`` for ``"all"`` or a sequence of original user ids.

    Ids are matched by their text form, so ``"42"`` finds user 42. Duplicates are dropped,
    order is kept. Unknown ids raise :class:`RecvaeError` naming the first few.
    """
    if isinstance(users, str):
        if users != "all":
            raise RecvaeError(f"users must be 'all' or a list of user ids, got {users!r}")
        return np.arange(dataset.n_users)
    import pandas as pd

    wanted = pd.unique(pd.Series(list(users), dtype=object).astype(str))
    known = pd.Index(pd.Series(dataset.user_ids, dtype=object).astype(str))
    if not known.is_unique:
        raise RecvaeError("dataset user ids are not unique; re-run ingest")
    idx = known.get_indexer(wanted)
    if (idx < 0).any():
        missing = wanted[idx < 0]
        shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
        raise RecvaeError(
            f"{len(missing)} unknown user id(s) not in the dataset: {shown} "
            f"(the dataset has {dataset.n_users} users)"
        )
    return idx.astype(np.int64)


def write_recommendations(
    model: Recommender,
    dataset: Dataset,
    out: str | os.PathLike,
    *,
    k: int = 100,
    users: str | Sequence = "all",
    format: Format | None = None,
    batch_size: int = 2000,
    show_progress: bool = False,
) -> Path:
    """Write each user's top-k unseen items to ``out`` (Parquet or CSV) and return its path.

    Columns: ``user_id`` (original id), ``rank`` (1-based), ``item_id`` (original id), ``score``.
    The history is ``dataset.full_history()``: every known interaction is excluded. Rows are
    scored in batches and streamed to a temporary file renamed to ``out`` when complete, so a
    crash leaves no partial file.

    Example::

        write_recommendations(model, dataset, "topk.csv", k=10, users=["42", "7"])
    """
    _check_sizes(k, batch_size)  # before anything is written (iter_topk checks only when run)
    model.check_items(dataset.item_ids, what="the dataset")
    fmt = format or infer_format(out)
    if fmt not in ("parquet", "csv"):
        raise RecvaeError(f"unknown output format {fmt!r}: expected 'parquet' or 'csv'")
    selected = select_users(dataset, users)
    history = _history_rows(dataset, selected)

    user_ids = pa.array(dataset.user_ids[selected])
    item_ids = pa.array(dataset.item_ids)
    schema = pa.schema(
        [("user_id", user_ids.type), ("rank", pa.int32()), ("item_id", item_ids.type),
         ("score", pa.float32())]
    )
    with atomic_file(out) as tmp:
        writer = _open_writer(tmp, fmt, schema)
        try:
            for rows, items, scores in iter_topk(
                model, history, k, batch_size=batch_size, show_progress=show_progress
            ):
                table = pa.Table.from_arrays(
                    [user_ids.take(rows), pa.array(_ranks(rows), pa.int32()), item_ids.take(items),
                     pa.array(scores, pa.float32())],
                    schema=schema,
                )
                writer.write_table(table)
        finally:
            writer.close()
    return Path(out)


def _history_rows(dataset: Dataset, selected: np.ndarray) -> sp.csr_matrix:
    """Full-history CSR rows for the selected user indices (empty rows for users without any)."""
    users, full = dataset.full_history()
    if len(users) == dataset.n_users and np.array_equal(selected, np.arange(dataset.n_users)):
        return full
    pos = np.full(dataset.n_users + 1, len(users), dtype=np.int64)  # last row: empty history
    pos[users] = np.arange(len(users))
    padded = sp.vstack([full, sp.csr_matrix((1, dataset.n_items), dtype=np.float32)]).tocsr()
    return padded[pos[selected]]


def _ranks(rows: np.ndarray) -> np.ndarray:
    """1-based rank within each run of equal row indices (rows are grouped, in rank order)."""
    if len(rows) == 0:
        return np.zeros(0, np.int32)
    starts = np.r_[0, np.flatnonzero(np.diff(rows)) + 1]
    lengths = np.diff(np.r_[starts, len(rows)])
    return (np.arange(len(rows)) - np.repeat(starts, lengths) + 1).astype(np.int32)


class _CsvWriter:
    """pyarrow's CSV writer over a (possibly gzip-compressed) file stream."""

    def __init__(self, path: Path, schema: pa.Schema, compressed: bool) -> None:
        self._sink = pa.CompressedOutputStream(str(path), "gzip") if compressed else pa.OSFile(
            str(path), "wb"
        )
        self._writer = pacsv.CSVWriter(self._sink, schema)

    def write_table(self, table: pa.Table) -> None:
        self._writer.write_table(table)

    def close(self) -> None:
        try:
            self._writer.close()
        finally:
            self._sink.close()


def _open_writer(tmp: Path, fmt: str, schema: pa.Schema) -> pq.ParquetWriter | _CsvWriter:
    if fmt == "parquet":
        return pq.ParquetWriter(str(tmp), schema, compression="zstd")
    # atomic_file keeps only the last suffix on the temp name: check the final name's ending
    compressed = tmp.name.lower().endswith(".gz")
    return _CsvWriter(tmp, schema, compressed)
