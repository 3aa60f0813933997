"""Netflix Prize ratings: ``mv_*.txt`` (training_set/) or Kaggle's ``combined_data_*.txt``."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from recvae.data.sources.engine import (
    _BOM,
    _clip,
    _existing,
    _first_true,
    _frame,
    _read_csv,
    _require_finite,
    _require_utf8_head,
    _Source,
)
from recvae.errors import RecvaeError


def read_netflix(path: str | os.PathLike) -> pd.DataFrame:
    """Netflix Prize ratings: user (customer id), item (movie id), value (stars), timestamp.

    ``path`` is the ``training_set/`` folder of ``mv_*.txt`` files (or the folder holding it), a
    folder of Kaggle's ``combined_data_*.txt`` files, or one such file. Each file holds blocks of a
    ``MOVIEID:`` line followed by ``CustomerID,Rating,YYYY-MM-DD`` lines. The timestamp is the
    date at 00:00 UTC.

    Example::

        df = read_netflix("data/raw/netflix/training_set")   # 100,480,507 rows
    """
    files = _netflix_files(_existing(path, "a Netflix training_set folder or combined_data file"))
    batches = [_read_netflix_batch(batch) for batch in _netflix_batches(files)]
    table = pa.concat_tables(t for t, _ in batches)
    items = np.concatenate([m for _, m in batches])
    days = table.column("date").cast(pa.int32()).to_numpy().astype(np.int64)
    return _frame(table.column("user"), items, table.column("rating"), timestamp=days * 86400)


def _netflix_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    has_files = any(path.glob("mv_*.txt")) or any(path.glob("combined_data_*.txt"))
    if not has_files and (path / "training_set").is_dir():
        path = path / "training_set"
    movies = sorted(path.glob("mv_*.txt"))
    combined = sorted(path.glob("combined_data_*.txt"))
    if movies and combined:
        raise RecvaeError(
            f"{path}: holds both mv_*.txt and combined_data_*.txt (the same ratings twice); "
            f"pass a folder with one kind"
        )
    if not (movies or combined):
        raise RecvaeError(
            f"{path}: no Netflix files; expected mv_*.txt (training_set/) or combined_data_*.txt"
        )
    return movies or combined


def _netflix_batches(files: list[Path], max_bytes: int = 1 << 28) -> Iterator[list[Path]]:
    """Group files so each parse sees up to 256 MB: 17,770 small mv_ files make ~8 parses."""
    batch: list[Path] = []
    size = 0
    for f in files:
        n = f.stat().st_size
        if batch and size + n > max_bytes:
            yield batch
            batch, size = [], 0
        batch.append(f)
        size += n
    if batch:
        yield batch


_MOVIE_LINE = re.compile(rb"(\d+):\r?")


def _read_bytes(path: Path) -> bytes:
    """A whole (small) file without its byte-order mark; an unreadable one, or UTF-16 / UTF-32
    text, is a RecvaeError."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise RecvaeError(f"{path}: cannot read ({e.strerror or e})") from None
    _require_utf8_head(str(path), data[: 1 << 12])
    return data.removeprefix(_BOM)


def _read_netflix_batch(files: list[Path]) -> tuple[pa.Table, np.ndarray]:
    """Parse Netflix files as one buffer: (user, rating, date) per rating and each one's movie."""
    if len(files) == 1:
        buf, offsets = _read_bytes(files[0]), [0]
    else:
        datas = [_read_bytes(f).rstrip() + b"\n" for f in files]
        offsets = np.cumsum([0] + [len(d) for d in datas[:-1]]).tolist()
        buf = b"".join(datas)
    labels = [str(f) for f in files]
    end = len(buf)  # ignore trailing whitespace (without copying the buffer as rstrip would)
    while end and buf[end - 1] in b" \t\r\n":
        end -= 1

    def where_pos(pos: int) -> str:
        k = int(np.searchsorted(offsets, pos, side="right")) - 1
        line = buf.count(b"\n", offsets[k], pos) + 1
        return f"{labels[k]}, line {line}"

    def where_line(line: int) -> str:  # line of the joined buffer -> file and its own line
        newlines = np.flatnonzero(np.frombuffer(buf, dtype=np.uint8) == 10)
        return where_pos(0 if line <= 1 else int(newlines[line - 2]) + 1)

    if end == 0:
        raise RecvaeError(f"{labels[0]}: empty file; expected a 'MOVIEID:' line, then ratings")
    for blank in (b"\n\n", b"\n\r\n"):
        if (at := buf.find(blank, 0, end)) >= 0:
            raise RecvaeError(f"{where_pos(at + 1)}: blank line; expected CustomerID,Rating,Date")

    # Movie lines are the only ones with a ':'. bytes.find jumps from one to the next at C speed,
    # so this loop runs once per movie (17,770 in all), never once per rating.
    movies, starts, ends = [], [], []
    colon = buf.find(b":", 0, end)
    while colon >= 0:
        start = buf.rfind(b"\n", 0, colon) + 1
        stop = buf.find(b"\n", colon)
        stop = len(buf) if stop < 0 else stop
        m = _MOVIE_LINE.fullmatch(buf, start, stop)
        if not m:
            text = buf[start:stop].decode(errors="replace")
            raise RecvaeError(
                f"{where_pos(start)}: expected 'MOVIEID:' or CustomerID,Rating,Date, "
                f"got {_clip(text)!r}"
            )
        movies.append(int(m[1]))
        starts.append(start)
        ends.append(stop + 1)
        colon = buf.find(b":", stop, end)
    headless = sorted(set(offsets) - set(starts))
    if headless:
        raise RecvaeError(f"{where_pos(headless[0])}: expected the first line to be 'MOVIEID:'")
    # Ratings per movie = lines between its header and the next (no blank lines, checked above).
    counts = np.array(
        [
            buf.count(b"\n", s, e) + int(e > s and buf[e - 1] != 10)
            for s, e in zip(ends, starts[1:] + [end], strict=True)
        ],
        dtype=np.int64,
    )

    def skip_movie_lines(row: Any) -> str:
        return "skip" if _MOVIE_LINE.fullmatch(row.text.encode()) else "error"

    # Every line is a record here (no blank lines), so a record number is a line of ``buf``.
    src = _Source(labels[0], lambda: pa.BufferReader(pa.py_buffer(buf)), where_line)
    columns = {"user": pa.int64(), "rating": pa.float64(), "date": pa.date32()}
    what = "CustomerID,Rating,YYYY-MM-DD"
    table = _read_csv(
        src, columns, what=what, invalid_row_handler=skip_movie_lines, missing_ok=True
    )
    if table.num_rows != counts.sum():
        raise RecvaeError(f"{labels[0]}: lines that are neither 'MOVIEID:' nor {what}")
    first_row = np.cumsum(counts) - counts

    def where(i: int) -> str:  # row i of block b sits b + 1 movie lines below the top
        b = int(np.searchsorted(first_row, i, side="right")) - 1
        return where_line(i + b + 2)

    for name in columns:
        col = table.column(name)
        if col.null_count:
            raise RecvaeError(
                f"{where(_first_true(col.is_null()))}, column {name!r}: missing value"
            )
    _require_finite(table.column("rating"), "rating", where)
    return table, np.repeat(np.array(movies, dtype=np.int64), counts)
