"""The ``table`` source read in bounded memory: one file, or a folder of parts as Spark or Dask
write them, streamed into compact :class:`~recvae.data.interactions.Interactions`.

``path`` is a Parquet, CSV, TSV or text file (optionally gzipped), or a folder of part files:

    data/interactions/
      _SUCCESS                                     markers: names starting with "_" or "." are
      _committed_8364151226, .part-00000-….crc     skipped, in any folder
      date=2024-01-01/part-00000-….snappy.parquet  hive folders: the partition column "date"
      date=2024-01-02/part-00001-….snappy.parquet

Parts are read in natural path order (``part.2`` before ``part.10``; zero-padded names and dates
sort as written), rows in file order, so a folder holds the same log as the single file its parts
were cut from, and ingests to the same dataset. Parquet parts are scanned with ``pyarrow.dataset``
in record batches of about a million rows; hive partition values are text (``user=007`` keeps its
zeros) and may supply a column the files lack. CSV/TSV/text parts (``.gz`` too) are read one part
at a time by :func:`recvae.data.sources.read_table`, so their memory is bounded by the largest
part, and partition folders do not supply their columns. All parts have one format.

Errors name the part and the column: a missing column, a column whose type differs from the
first part's, a file that is not a part, an empty folder.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import scipy.sparse as sp

from recvae.data.interactions import Interactions, InteractionsBuilder, SeenBuilder
from recvae.data.sources import TABLE_FORMATS, check_options, read_source, read_table
from recvae.data.sources.engine import (
    _clip,
    _numbers,
    _require_finite,
    _require_text_ids,
    _timestamps,
)
from recvae.data.sources.table import _table_format
from recvae.errors import RecvaeError

BATCH_ROWS = 1 << 20
_NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"  # how Spark and Hive write a null partition value


@dataclass(frozen=True)
class TablePart:
    """One part file, its format and the hive ``key=value`` folders above it."""

    path: Path
    format: str
    partition: dict[str, str | None] = field(default_factory=dict)


def read_interactions(
    source: str,
    path: str | os.PathLike,
    *,
    threshold: float | None,
    allow_negative: bool = False,
    **options: Any,
) -> Interactions:
    """Positive interactions (``value > threshold``; all rows for None, where a negative value is
    an error unless ``allow_negative``) of the source at ``path``.

    The ``table`` source streams (:func:`scan_table`); the others go through their DataFrame
    reader (:data:`recvae.data.sources.SOURCES`).

    Example::

        log = read_interactions("table", "data/interactions/", threshold=None, user_col="u",
                                item_col="i")
    """
    check_options(source, options)
    if source == "table":
        return scan_table(path, threshold=threshold, allow_negative=allow_negative, **options)
    return Interactions.from_frame(
        read_source(source, path), threshold=threshold, allow_negative=allow_negative,
        source=str(path),
    )


def read_seen(
    source: str,
    path: str | os.PathLike,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    *,
    rows: int | None = None,
    **options: Any,
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Every (user, item) pair of the source at ``path``, whatever its value, over a dataset's
    users and items: (bool CSR, ids of the log's other users), as :class:`SeenBuilder` says.

    A second read of the log the dataset was built from: the ``table`` source streams its user
    and item columns only. ``rows``, if given, is the number of rows the first read found; a
    different number means the source changed in between, an error.
    """
    check_options(source, options)
    if source == "table":
        builder = SeenBuilder(user_ids, item_ids)
        for user, item in _table_batches(path, **{**options, "value_col": None, "timestamp_col": None}):
            builder.add(user, item)
        pa.default_memory_pool().release_unused()
        n, (seen, others) = builder.rows_read, builder.finish()
    else:
        raw = read_source(source, path)
        n = len(raw)
        seen, others = SeenBuilder.from_frame(raw, user_ids, item_ids)
    if rows is not None and n != rows:
        raise RecvaeError(
            f"{path}: {n:,} rows now, {rows:,} when it was first read: the source changed during "
            "ingest; ingest again"
        )
    return seen, others


def scan_table(
    path: str | os.PathLike,
    *,
    threshold: float | None,
    allow_negative: bool = False,
    user_col: str = "user",
    item_col: str = "item",
    value_col: str | None = None,
    timestamp_col: str | None = None,
    sep: str | None = None,
    format: str | None = None,
) -> Interactions:
    """Interactions of a table file or a folder of parts (see the module docstring), keeping
    rows with ``value > threshold`` (negative values under None need ``allow_negative``).
    Options as in :func:`recvae.data.sources.read_table`.

    Example::

        log = scan_table("runs/spark/events/", threshold=None, user_col="u", item_col="i")
    """
    builder = InteractionsBuilder(
        threshold=threshold, allow_negative=allow_negative, source=str(path),
        with_timestamp=timestamp_col is not None,
    )
    for user, item, *rest in _table_batches(
        path, user_col=user_col, item_col=item_col, value_col=value_col,
        timestamp_col=timestamp_col, sep=sep, format=format,
    ):
        builder.add(user, item, rest[0] if value_col is not None else None,
                    timestamp=rest[-1] if timestamp_col is not None else None)
    # Arrow's allocator keeps the pages of the last record batches for reuse; hand them back
    # before the log's blocks are joined into one array.
    pa.default_memory_pool().release_unused()
    return builder.finish()


def _table_batches(
    path: str | os.PathLike,
    *,
    user_col: str = "user",
    item_col: str = "item",
    value_col: str | None = None,
    timestamp_col: str | None = None,
    sep: str | None = None,
    format: str | None = None,
) -> Iterator[tuple[Any, ...]]:
    """(user, item[, value][, timestamp]) columns of a table file or folder of parts, a batch at
    a time: ids as arrow arrays, values float64 and timestamps int64 numpy arrays. Raises if
    there are no rows at all."""
    root = Path(path)
    wanted = [user_col, item_col] + [c for c in (value_col, timestamp_col) if c is not None]
    if len(set(wanted)) < len(wanted):
        raise RecvaeError(f"{root}: one column is named for two roles: {wanted}")
    roles = {user_col: "id", item_col: "id"}
    if value_col is not None:
        roles[value_col] = "value"
    if timestamp_col is not None:
        roles[timestamp_col] = "timestamp"
    parts = find_parts(root, format)
    kinds: dict[str, tuple[str, TablePart, pa.DataType]] = {}
    n = 0
    for part in parts:
        if part.format == "parquet" and not part.path.name.lower().endswith(".gz"):
            batches = _parquet_batches(part, roles, kinds)
        else:
            batches = _text_batches(part, user_col, item_col, value_col, timestamp_col, sep)
        for cols in batches:
            n += len(cols[user_col])
            yield tuple(cols[c] for c in wanted)
    if n == 0:
        what = "empty file" if root.is_file() else f"the {len(parts)} part file(s) are empty"
        raise RecvaeError(f"{root}: {what} (no interactions)")


# =========================================================================== parts
def find_parts(path: Path, format: str | None = None) -> list[TablePart]:
    """The part files of a folder in natural path order (or ``path`` itself if it is a file)."""
    if format is not None and format not in TABLE_FORMATS:
        raise RecvaeError(
            f"unknown table format {format!r}: expected one of {', '.join(TABLE_FORMATS)}"
        )
    if path.is_file():
        return [TablePart(path, _table_format(path, format))]
    if not path.is_dir():
        raise RecvaeError(f"{path}: no such file or folder; expected a table file or a folder of parts")
    if (path / "_delta_log").is_dir():
        raise RecvaeError(
            f"{path}: a Delta Lake table (it has _delta_log/), whose folder also holds files that "
            "later versions removed; write the interactions with df.write.parquet(...) instead"
        )
    parts = []
    for f in sorted(path.rglob("*"), key=lambda p: _natural(p.relative_to(path))):
        rel = f.relative_to(path)
        if any(name.startswith(("_", ".")) for name in rel.parts) or not f.is_file():
            continue
        fmt = format or _format_of(f)
        if fmt is None:
            raise RecvaeError(
                f"{f}: not a part file (suffix {_suffix(f) or 'none'}); a folder of parts may hold "
                f"only .parquet or .csv/.tsv/.txt(.gz) parts and markers whose names start with "
                f"'_' or '.'; move it away, or pass format= if every file is a part"
            )
        parts.append(TablePart(f, fmt, _partition(rel)))
    if not parts:
        raise RecvaeError(
            f"{path}: no part files; expected Parquet (*.parquet) or CSV (*.csv, *.tsv, *.txt, "
            f"optionally .gz) parts as Spark or Dask write them (names starting with '_' or '.' "
            f"are skipped)"
        )
    text = [p for p in parts if (p.format == "parquet") != (parts[0].format == "parquet")]
    if text:
        raise RecvaeError(
            f"{path}: parts of two formats, e.g. {parts[0].path.name} ({parts[0].format}) and "
            f"{text[0].path} ({text[0].format}); keep one format per folder"
        )
    return parts


def _suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes[-1:] == [".gz"]:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _format_of(path: Path) -> str | None:
    fmt = _suffix(path).lstrip(".")
    return fmt if fmt in TABLE_FORMATS else None


def _natural(rel: Path) -> list[Any]:
    """Sort key comparing digit runs as numbers: part.2 < part.10, part-00002 < part-00010."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", rel.as_posix())]


def _partition(rel: Path) -> dict[str, str | None]:
    """Hive ``key=value`` folders of a part's relative path (values URL-decoded, as Spark
    escapes them)."""
    out: dict[str, str | None] = {}
    for name in rel.parts[:-1]:
        if "=" in name:
            key, value = name.split("=", 1)
            value = unquote(value)
            out[unquote(key)] = None if value == _NULL_PARTITION else value
    return out


# =========================================================================== batches
_KINDS: tuple[tuple[str, Callable[[pa.DataType], bool]], ...] = (
    ("integer", pa.types.is_integer),
    ("text", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)),
    ("floating", pa.types.is_floating),
    ("decimal", pa.types.is_decimal),
    ("boolean", pa.types.is_boolean),
    ("timestamp", pa.types.is_timestamp),
    ("date", pa.types.is_date),
)
_ACCEPTED = {
    "id": ("integer", "text"),
    "value": ("integer", "floating", "decimal", "boolean", "text"),
    "timestamp": ("integer", "timestamp", "date", "text"),
}
_EXPECTED = {
    "id": "integer or text ids",
    "value": "numbers",
    "timestamp": "epoch seconds or dates",
}


def _kind(t: pa.DataType) -> str:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return next((name for name, test in _KINDS if test(t)), str(t))


def _parquet_batches(
    part: TablePart, roles: dict[str, str], kinds: dict[str, tuple[str, TablePart, pa.DataType]]
) -> Iterator[dict[str, Any]]:
    """Checked, converted columns of one Parquet part, a record batch at a time.

    ``kinds`` records each column's type kind in the first part that had it; a later part with
    another kind is an error.
    """
    try:
        dataset = ds.dataset(str(part.path), format="parquet")
        schema = dataset.schema
        # A row group at a time: a fragment scanned whole reads ahead without bound while the
        # batches are being encoded (650 MB of a 50-row-group file, measured), one row group
        # holds ~1M rows.
        row_groups = [g for f in dataset.get_fragments() for g in f.split_by_row_group()]
    except (pa.ArrowInvalid, OSError) as e:
        raise RecvaeError(
            f"{part.path}: not a readable Parquet file ({_clip(str(e), 120)})"
        ) from None
    in_file = [c for c in roles if c in schema.names]
    for name in roles:
        if name in schema.names:
            t = schema.field(name).type
        elif name in part.partition:
            t = pa.string()
        else:
            found = schema.names + [f"{k} (partition folder)" for k in part.partition]
            raise RecvaeError(f"{part.path}: no column {name!r}; columns found: {found}")
        kind = _kind(t)
        if kind not in _ACCEPTED[roles[name]]:
            raise RecvaeError(
                f"{part.path}, column {name!r}: type {t}; expected {_EXPECTED[roles[name]]}"
            )
        first = kinds.setdefault(name, (kind, part, t))
        if first[0] != kind:
            raise RecvaeError(
                f"{part.path}, column {name!r}: type {t}, but {first[1].path} has {first[2]}; "
                f"every part must give a column the same type"
            )
    offset = 0
    for group in row_groups:
        # no pre-buffering: it fetches column chunks ahead, which pays off on object stores only
        scanned = group.to_batches(
            columns=in_file, batch_size=BATCH_ROWS, batch_readahead=0,
            fragment_scan_options=ds.ParquetFragmentScanOptions(pre_buffer=False),
        )
        while True:
            try:
                batch = next(scanned)
            except StopIteration:
                break
            except (pa.ArrowInvalid, OSError) as e:
                raise RecvaeError(
                    f"{part.path}: cannot read the rows after row {offset} ({_clip(str(e), 120)})"
                ) from None
            if batch.num_rows:
                yield _convert(batch, part, roles, offset)
            offset += batch.num_rows


def _convert(
    batch: pa.RecordBatch, part: TablePart, roles: dict[str, str], offset: int
) -> dict[str, Any]:
    def where(i: int) -> str:
        return f"{part.path}, row {offset + i + 1}"

    n = batch.num_rows
    out: dict[str, Any] = {}
    for name, role in roles.items():
        if name in batch.schema.names:
            col = batch.column(name)
        else:
            value = part.partition[name]
            col = pa.nulls(n, pa.string()) if value is None else pa.array([value] * n, pa.string())
        if col.null_count:
            raise RecvaeError(f"{where(_first_null(col))}, column {name!r}: missing value")
        if pa.types.is_dictionary(col.type):
            col = col.dictionary_decode()
        if role == "id":
            if _kind(col.type) == "text":
                _require_text_ids(col, name, where)
            out[name] = col
        elif role == "value":
            if pa.types.is_decimal(col.type):  # Spark's DECIMAL columns
                col = col.cast(pa.float64())
            value = _numbers(col, name, where)
            _require_finite(value, name, where)
            out[name] = _numpy(value, np.float64)
        else:
            out[name] = _numpy(_timestamps(col, name, where), np.int64)
    return out


def _text_batches(
    part: TablePart,
    user_col: str,
    item_col: str,
    value_col: str | None,
    timestamp_col: str | None,
    sep: str | None,
) -> Iterator[dict[str, Any]]:
    """One CSV/TSV/text part (or a gzipped Parquet file) as one batch, read by ``read_table``."""
    if part.path.stat().st_size == 0 and part.format != "parquet":
        return  # an empty partition's part
    df = read_table(
        part.path, user_col=user_col, item_col=item_col, value_col=value_col,
        timestamp_col=timestamp_col, sep=sep, format=part.format,
    )
    out: dict[str, Any] = {user_col: _arrow(df["user"]), item_col: _arrow(df["item"])}
    if value_col is not None:
        out[value_col] = df["value"].to_numpy(dtype=np.float64)
    if timestamp_col is not None:
        out[timestamp_col] = df["timestamp"].to_numpy(dtype=np.int64)
    yield out


def _arrow(values: Any) -> pa.Array:
    arr = pa.array(values)
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def _numpy(values: Any, dtype: type) -> np.ndarray:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = values.to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=dtype)


def _first_null(col: pa.Array) -> int:
    return int(np.argmax(col.is_null().to_numpy(zero_copy_only=False)))
