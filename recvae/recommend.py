"""Top-k recommendations for users' histories, in batches, written as files with original ids.

The full user × item score matrix is never held in memory: rows are scored ``batch_size`` at a
time, masked, reduced to their top k and streamed to the output file.

What a user is never recommended (``exclude``):

- ``all`` (default): every item the user interacted with in the raw log, whatever its value
  or threshold (``Dataset.seen``), and every known positive;
- ``train``: only what models are given (training rows and evaluation users' fold-in), so the
  held-out targets stay rankable: an offline check against the test part;
- ``none``: nothing.

The model scores a user from their positives (all of them; with ``exclude="train"``, without
the held-out targets). Users the model cannot score, because preprocessing dropped them (too
few positives) or they are not in the log at all, get the ``popularity`` fallback: the items
with the most users among the dataset's positives, their own raw-log items excluded, marked
``source = "fallback"`` in the output (``fallback="none"``: an error naming them).

Example::

    model = load_model("runs/models/mult-vae")
    write_recommendations(model, Dataset.load("runs/data/ml-20m"), "topk.parquet", k=100)
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
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

COLUMNS = ("user_id", "rank", "item_id", "score", "source")
EXCLUDE = ("all", "train", "none")
FALLBACKS = ("popularity", "none")
Format = Literal["parquet", "csv"]
Exclude = Literal["all", "train", "none"]
Fallback = Literal["popularity", "none"]
ScoreFn = Callable[[sp.csr_matrix], np.ndarray]


def _topk_batches(
    score: ScoreFn,
    history: sp.csr_matrix,
    masks: Sequence[sp.csr_matrix],
    k: int,
    batch_size: int,
    *,
    rows: np.ndarray | None = None,
    progress: Callable[[int], object] | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(position, item, score)`` arrays batch by batch: for the ``rows`` of ``history`` (all by
    default; ``position`` counts them from 0), the top k of ``score(history rows)`` after the
    items of those rows in any of ``masks`` are set to -inf. The one loop behind every top-k
    export; matrices are sliced per batch, never copied whole."""
    n_rows = history.shape[0] if rows is None else len(rows)
    k = min(k, history.shape[1])
    for sl in row_batches(n_rows, batch_size):
        take = sl if rows is None else rows[sl]
        scores = torch.from_numpy(score(history[take]))
        mask = None
        for m in masks:
            mask = m[take] if mask is None else mask + m[take]
        # score() returns a new array: mask it in place rather than copying it
        idx, val = topk_masked(scores, mask, k, inplace=True)
        idx, val = idx.numpy(), val.numpy()
        # -inf marks a slot left over when fewer than k items are unmasked
        keep = np.isfinite(val)
        position = np.broadcast_to(np.arange(sl.start, sl.stop)[:, None], idx.shape)
        yield (
            position[keep].astype(np.int64),
            idx[keep].astype(np.int64),
            val[keep].astype(np.float32),
        )
        if progress is not None:
            progress(sl.stop - sl.start)


def _progress_bar(total: int, desc: str, show: bool):  # noqa: ANN202 - a tqdm bar
    """A transient per-batch bar: shown only on a terminal, cleared when done."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="user", leave=False, disable=None if show else True)


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
    with _progress_bar(history.shape[0], f"top-{k} {model.name}", show_progress) as bar:
        yield from _topk_batches(
            model.score, history, [history] if exclude_seen else [], k, batch_size,
            progress=bar.update,
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


# ------------------------------------------------------------------------------- audience
@dataclass(frozen=True)
class Audience:
    """The users to recommend for, in output order.

    ``ids``: their original ids; ``rows``: each one's row in ``Dataset.raw_user_ids`` (below
    ``n_users``: a user of the dataset, scored by the model; above: a user that preprocessing
    dropped; -1: a user not in the log). Only rows below ``n_users`` get model recommendations.
    """

    ids: pa.Array
    rows: np.ndarray
    n_users: int

    @property
    def n_model(self) -> int:
        """How many of the users the model scores."""
        return int(((self.rows >= 0) & (self.rows < self.n_users)).sum())


def resolve_users(dataset: Dataset, users: str | Sequence, *, fallback: Fallback) -> Audience:
    """The :class:`Audience` for ``users``: ``"all"`` or a sequence of original user ids.

    ``"all"``: every user of the raw log (the dataset's users, then those preprocessing
    dropped); with ``fallback="none"``, only the dataset's users, which the model scores. A
    sequence is matched by the ids' text form (``"42"`` finds user 42), duplicates dropped and
    order kept; with ``fallback="none"``, ids the model cannot score are an error naming them.
    """
    if fallback not in FALLBACKS:
        raise RecvaeError(f"fallback must be one of {', '.join(FALLBACKS)}, got {fallback!r}")
    n_users = dataset.n_users
    if isinstance(users, str):
        if users != "all":
            raise RecvaeError(f"users must be 'all' or a list of user ids, got {users!r}")
        ids = dataset.user_ids if fallback == "none" else dataset.raw_user_ids
        return Audience(ids=pa.array(ids), rows=np.arange(len(ids), dtype=np.int64), n_users=n_users)

    known = dataset.raw_user_ids
    wanted = pd.unique(pd.Series(list(users), dtype=object).astype(str))
    index = pd.Index(pd.Series(known, dtype=object).astype(str))
    if not index.is_unique:
        raise RecvaeError("dataset user ids are not unique; re-run ingest")
    rows = index.get_indexer(wanted).astype(np.int64)
    uncovered = (rows < 0) | (rows >= n_users)
    if fallback == "none" and uncovered.any():
        raise RecvaeError(_uncovered_message(wanted, rows, n_users))
    ids = pa.array(known).take(pa.array(np.where(rows >= 0, rows, 0)))
    if (rows < 0).any():  # ids not in the log keep the given text, in the dataset's id type
        ids = _with_unknown_ids(ids, wanted, rows < 0)
    return Audience(ids=ids, rows=rows, n_users=n_users)


def _uncovered_message(wanted: np.ndarray, rows: np.ndarray, n_users: int) -> str:
    def shown(ids: np.ndarray) -> str:
        return ", ".join(map(str, ids[:5])) + (", ..." if len(ids) > 5 else "")

    parts = []
    dropped, unknown = wanted[rows >= n_users], wanted[rows < 0]
    if len(dropped):
        parts.append(f"{len(dropped)} dropped by preprocessing ({shown(dropped)})")
    if len(unknown):
        parts.append(f"{len(unknown)} not in the dataset ({shown(unknown)})")
    return (
        f"{' and '.join(parts)}: user id(s) the model has no recommendations for, and fallback "
        f"is none; use fallback popularity (marked source=fallback) or leave them out "
        f"(the dataset has {n_users} users)"
    )


def _with_unknown_ids(ids: pa.Array, wanted: np.ndarray, unknown: np.ndarray) -> pa.Array:
    """``ids`` with the ``unknown`` positions replaced by ``wanted`` cast to ``ids``' type."""
    import pyarrow.compute as pc

    try:
        given = pc.cast(pa.array(wanted[unknown].tolist(), pa.string()), ids.type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise RecvaeError(
            f"user ids {', '.join(wanted[unknown][:5])}: not in the dataset, and not of its id "
            f"type ({ids.type})"
        ) from None
    return pc.replace_with_mask(ids, pa.array(unknown), given)


# ------------------------------------------------------------------------------- files
@dataclass(frozen=True)
class TopkFile:
    """What :func:`write_recommendations` wrote: the file, its users and rows."""

    path: Path
    users: int
    model_users: int
    fallback_users: int
    rows: int

    def describe(self) -> str:
        """``610 users (603 from the model, 7 from the popularity fallback), 61,000 rows``."""
        return (
            f"{self.users} users ({self.model_users} from the model, {self.fallback_users} from "
            f"the popularity fallback), {self.rows:,} rows"
        )


def write_recommendations(
    model: Recommender,
    dataset: Dataset,
    out: str | os.PathLike,
    *,
    k: int = 100,
    users: str | Sequence = "all",
    exclude: Exclude = "all",
    fallback: Fallback = "popularity",
    format: Format | None = None,
    batch_size: int = 2000,
    show_progress: bool = False,
) -> TopkFile:
    """Write each user's top-k items to ``out`` (Parquet or CSV).

    Columns: ``user_id`` (original id), ``rank`` (1-based), ``item_id`` (original id),
    ``score`` (the model's; for fallback rows, the item's number of users) and ``source``
    (``model`` or ``fallback``). ``users``, ``exclude`` and ``fallback`` are described in the
    module docstring. Users are written in the order given (``"all"``: the dataset's users,
    then those preprocessing dropped). Rows are scored in batches and streamed to a temporary
    file renamed to ``out`` when complete, so a crash leaves no partial file.

    Example::

        write_recommendations(model, dataset, "topk.csv", k=10, users=["42", "7"])
    """
    _check_sizes(k, batch_size)  # before anything is written (iter_topk checks only when run)
    if exclude not in EXCLUDE:
        raise RecvaeError(f"exclude must be one of {', '.join(EXCLUDE)}, got {exclude!r}")
    model.check_items(dataset.item_ids, what="the dataset")
    fmt = format or infer_format(out)
    if fmt not in ("parquet", "csv"):
        raise RecvaeError(f"unknown output format {fmt!r}: expected 'parquet' or 'csv'")
    if exclude == "all" and dataset.seen is None:
        raise RecvaeError(
            "exclude all needs the raw log's interactions, which this dataset does not record "
            "(built in memory, or ingested before dataset format 2): re-ingest it (`recvae ingest "
            "... --force`), or use exclude train"
        )
    audience = resolve_users(dataset, users, fallback=fallback)
    sources = _Sources(dataset, exclude)

    item_ids = pa.array(dataset.item_ids)
    schema = pa.schema(
        [("user_id", audience.ids.type), ("rank", pa.int32()), ("item_id", item_ids.type),
         ("score", pa.float32()), ("source", pa.string())]
    )
    n_rows = 0
    with atomic_file(out) as tmp, _progress_bar(
        len(audience.rows), f"top-{k} {model.name}", show_progress
    ) as bar:
        writer = _open_writer(tmp, fmt, schema)
        try:
            for start, stop, kind in _runs(audience):
                score, history, masks, rows = sources.plan(model, kind, audience.rows[start:stop])
                label = pa.scalar("model" if kind == MODEL else "fallback")
                for pos, items, scores in _topk_batches(
                    score, history, masks, k, batch_size, rows=rows, progress=bar.update
                ):
                    if kind != MODEL:
                        scores = sources.popularity[items]
                    table = pa.Table.from_arrays(
                        [audience.ids.take(pa.array(start + pos)), pa.array(_ranks(pos), pa.int32()),
                         item_ids.take(items), pa.array(scores, pa.float32()),
                         pa.repeat(label, len(pos))],
                        schema=schema,
                    )
                    writer.write_table(table)
                    n_rows += len(pos)
        finally:
            writer.close()
    n_users = len(audience.rows)
    return TopkFile(Path(out), n_users, audience.n_model, n_users - audience.n_model, n_rows)


MODEL, DROPPED, UNKNOWN = 0, 1, 2  # how a user is scored: the model, or the fallback


def _runs(audience: Audience) -> Iterator[tuple[int, int, int]]:
    """``(start, stop, kind)`` of the consecutive users of one kind, in output order."""
    rows = audience.rows
    kind = np.where(rows < 0, UNKNOWN, np.where(rows < audience.n_users, MODEL, DROPPED))
    bounds = np.r_[0, np.flatnonzero(np.diff(kind)) + 1, len(rows)]
    for start, stop in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        if stop > start:
            yield start, stop, int(kind[start])


class _Sources:
    """What each kind of user is scored from and what is masked, for one ``exclude`` mode.

    Model users are scored from their positives (``exclude="train"``: without the held-out
    targets), fallback users by popularity. ``all`` masks the raw log's pairs and the
    positives, ``train`` the model's input, ``none`` nothing.
    """

    def __init__(self, dataset: Dataset, exclude: str) -> None:
        self.exclude = exclude
        users, positives = dataset.full_history()
        # distinct users per item among the positives: the fallback's ranking
        self.popularity = np.bincount(positives.indices, minlength=dataset.n_items).astype(np.float32)
        # what the fallback ranks by: popularity, ties broken by item order (top-k is not stable)
        self.order = np.empty(dataset.n_items, dtype=np.float32)
        self.order[np.argsort(-self.popularity, kind="stable")] = np.arange(dataset.n_items, 0, -1)
        if exclude == "train":
            users, positives = dataset.training_history()
        self.history = _rows_of(users, positives, dataset.n_users)
        self.seen = dataset.seen

    def plan(
        self, model: Recommender, kind: int, rows: np.ndarray
    ) -> tuple[ScoreFn, sp.csr_matrix, list[sp.csr_matrix], np.ndarray]:
        """``(score, history, masks, rows)`` for :func:`_topk_batches`."""
        if kind == MODEL:
            masks = {"none": [], "train": [self.history], "all": [self.history, self.seen]}
            return model.score, self.history, masks[self.exclude], rows
        order = self.order

        def score(batch: sp.csr_matrix) -> np.ndarray:
            return np.broadcast_to(order, (batch.shape[0], len(order))).copy()

        if kind == UNKNOWN:  # not in the log: nothing to exclude, nothing to index
            rows = np.arange(len(rows))
        n = int(rows.max()) + 1 if len(rows) else 0
        nothing = sp.csr_matrix((n, len(order)), dtype=np.float32)
        masks = [self.seen] if kind == DROPPED and self.exclude == "all" else []
        return score, nothing, masks, rows


def _rows_of(users: np.ndarray, history: sp.csr_matrix, n_users: int) -> sp.csr_matrix:
    """``history`` (one row per entry of ``users``) as (n_users, n_items): empty rows elsewhere."""
    if len(users) == n_users:
        return history
    pos = np.full(n_users + 1, len(users), dtype=np.int64)  # last row: empty history
    pos[users] = np.arange(len(users))
    empty = sp.csr_matrix((1, history.shape[1]), dtype=history.dtype)
    return sp.vstack([history, empty]).tocsr()[pos[:n_users]]


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
