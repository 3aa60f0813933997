"""The generic ``table`` source read whole: one CSV, TSV or Parquet file (optionally gzipped)
with a header, the columns named by options. :mod:`recvae.data.tables` streams the same source
(and folders of parts) in bounded memory with these checks.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recvae.data.sources.engine import (
    Where,
    _check_compressed,
    _clip,
    _csv_where,
    _existing,
    _file_source,
    _first_line,
    _first_true,
    _frame,
    _ids,
    _numbers,
    _read_csv,
    _require_finite,
    _require_rows,
    _Source,
    _split_header,
    _timestamps,
)
from recvae.errors import RecvaeError

TABLE_FORMATS: tuple[str, ...] = ("csv", "tsv", "txt", "parquet")
TABLE_OPTIONS: tuple[str, ...] = (
    "user_col",
    "item_col",
    "value_col",
    "timestamp_col",
    "sep",
    "format",
)


def read_table(
    path: str | os.PathLike,
    *,
    user_col: str = "user",
    item_col: str = "item",
    value_col: str | None = None,
    timestamp_col: str | None = None,
    sep: str | None = None,
    format: str | None = None,
) -> pd.DataFrame:
    """A generic interaction table with a header: CSV, TSV or Parquet, optionally gzipped.

    ``format`` is one of :data:`TABLE_FORMATS`; by default it comes from the suffix (``.csv``,
    ``.tsv``, ``.txt`` (tab separated), ``.parquet``, each optionally followed by ``.gz``).
    ``sep`` overrides the separator of text tables (one character). Without ``value_col`` every
    value is 1.0. ``timestamp_col`` may hold integer epoch seconds or ISO-8601 dates/times (UTC
    unless they carry an offset). Integer ids become int64; any other id stays a string.

    Example::

        df = read_table("events.tsv.gz", user_col="uid", item_col="sku", timestamp_col="ts")
    """
    file = _existing(path, "a CSV, TSV or Parquet table", want_file=True)
    fmt = _table_format(file, format)
    wanted = [user_col, item_col] + [c for c in (value_col, timestamp_col) if c is not None]
    if len(set(wanted)) < len(wanted):
        raise RecvaeError(f"{file}: one column is named for two roles: {wanted}")
    if fmt == "parquet":
        table, where = _read_parquet(file, wanted)
    else:
        sep = sep if sep is not None else ("," if fmt == "csv" else "\t")
        if len(sep) != 1:
            raise RecvaeError(f"sep must be a single character, got {sep!r}")
        src = _file_source(file)
        table = _read_text_table(src, wanted, sep, value_col)
        where = _csv_where(src, 1)
    _require_rows(str(file), table)
    for name in wanted:
        col = table.column(name)
        if col.null_count:
            raise RecvaeError(
                f"{where(_first_true(col.is_null()))}, column {name!r}: missing value"
            )

    user = _ids(table.column(user_col), user_col, where)
    item = _ids(table.column(item_col), item_col, where)
    value: Any = np.ones(table.num_rows)
    if value_col is not None:
        value = _numbers(table.column(value_col), value_col, where)
        _require_finite(value, value_col, where)
    ts = None
    if timestamp_col is not None:
        ts = _timestamps(table.column(timestamp_col), timestamp_col, where)
    return _frame(user, item, value, timestamp=ts)


def _table_format(path: Path, format: str | None) -> str:
    if format is not None:
        if format not in TABLE_FORMATS:
            raise RecvaeError(
                f"unknown table format {format!r}: expected one of {', '.join(TABLE_FORMATS)}"
            )
        return format
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes[-1:] == [".gz"]:
        suffixes = suffixes[:-1]
    fmt = suffixes[-1].lstrip(".") if suffixes else ""
    if fmt not in TABLE_FORMATS:
        raise RecvaeError(
            f"{path}: unknown table format {fmt or '(no suffix)'!r}; expected a suffix .csv, "
            f".tsv, .txt or .parquet (optionally + .gz), or pass format= one of "
            f"{', '.join(TABLE_FORMATS)}"
        )
    return fmt


def _read_text_table(src: _Source, wanted: list[str], sep: str, value_col: str | None) -> pa.Table:
    first = _first_line(src)
    if first is None or not first.strip():
        raise RecvaeError(f"{src.label}: empty file; expected a header line naming the columns")
    header = _split_header(first, sep)
    missing = [c for c in wanted if c not in header]
    if missing:
        hint = ""
        if len(header) == 1 and any(s in header[0] for s in ",\t; "):
            hint = f" (a single column: is the separator {sep!r} right? pass sep=...)"
        raise RecvaeError(
            f"{src.label}, line 1: no column {missing[0]!r}; columns found: {header}{hint}"
        )
    columns: dict[str, pa.DataType | None] = {n: None for n in header}
    for name in wanted:
        columns[name] = pa.float64() if name == value_col else pa.string()
    what = f"{len(header)} fields separated by {sep!r}"
    return _read_csv(
        src, columns, what=what, delimiter=sep, skip_rows=1, quoting=True, include=wanted
    )


def _read_parquet(path: Path, wanted: list[str]) -> tuple[pa.Table, Where]:
    compression = _check_compressed(path)
    # pyarrow raises ArrowInvalid or OSError for a truncated or foreign file (at open, or only
    # when a damaged row group is read); gzip raises EOFError or zlib.error.
    errors = (pa.ArrowInvalid, OSError, EOFError, zlib.error)
    try:
        if compression == "gzip":
            with gzip.open(path, "rb") as f:
                pfile = pq.ParquetFile(pa.BufferReader(f.read()))
        else:
            pfile = pq.ParquetFile(path)
        names = pfile.schema_arrow.names
        missing = [c for c in wanted if c not in names]
        if missing:
            raise RecvaeError(f"{path}: no column {missing[0]!r}; columns found: {names}")
        table = pfile.read(columns=wanted)
    except errors as e:
        raise RecvaeError(f"{path}: not a readable Parquet file ({_clip(str(e), 120)})") from None
    return table, lambda i: f"{path}, row {i + 1}"
