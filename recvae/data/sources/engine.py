"""Readers for raw interaction logs, each returning one tidy DataFrame with the original ids.

Columns of every result, one row per interaction:

    user       original user id: int64, or str where the source uses strings
    item       original item id: int64 or str
    value      float64: a rating, a play count, or 1.0 for implicit feedback
    timestamp  int64 seconds since the epoch (only where the source has times)
    part       "train" / "test" (only for sources that come with a predefined split)

Text is parsed by pyarrow's multithreaded CSV reader with explicit column types; nothing loops
over lines in Python. Problems raise :class:`~recvae.errors.RecvaeError` with one line naming the
file, the line (1-based, counting every physical line) and the column, and what was expected.

Example::

    ratings = read_source("movielens", "data/raw/ml-20m.zip")
    events = read_table("events.csv.gz", user_col="customer", item_col="sku", value_col="qty")
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import os
import re
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

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

# Text ids written as canonical integers ("0", "42", "-7"; at most 18 digits, so they fit int64)
# become int64; anything else ("007", "u1", "1.0") stays a string, so no id is ever altered.
_INT_ID = r"^(0|-?[1-9][0-9]{0,17})$"
_UINT_TOKEN = r"^[0-9]{1,18}$"

Where = Callable[[int], str]  # row index of a parsed table -> "FILE, line N" (or "FILE, row N")


# =========================================================================== public readers
def read_source(source: str, path: str | os.PathLike, **options: Any) -> pd.DataFrame:
    """Read ``path`` with the reader named by ``source`` (one of :data:`SOURCES`).

    ``options`` go to the reader; only ``table`` takes any (:data:`TABLE_OPTIONS`).

    Example::

        df = read_source("table", "clicks.parquet", user_col="uid", item_col="sku")
    """
    check_options(source, options)
    return SOURCES[source](path, **options)


def check_options(source: str, options: dict[str, Any]) -> None:
    """Raise unless ``source`` is known and takes ``options`` (only ``table`` takes any)."""
    if source not in SOURCES:
        raise RecvaeError(f"unknown source {source!r}: expected one of {', '.join(SOURCES)}")
    if options and source != "table":
        raise RecvaeError(f"source {source!r} takes no options, got {', '.join(sorted(options))}")
    unknown = sorted(set(options) - set(TABLE_OPTIONS))
    if unknown:
        raise RecvaeError(
            f"unknown option(s) {', '.join(unknown)} for source 'table': "
            f"expected some of {', '.join(TABLE_OPTIONS)}"
        )


def read_movielens(path: str | os.PathLike) -> pd.DataFrame:
    """MovieLens ratings: user, item (movie id), value (stars), timestamp.

    ``path`` is an official zip (ml-100k, ml-1m, ml-10m, ml-20m, ml-25m, ml-32m, ml-latest,
    ml-latest-small), the folder it unpacks to or the folder holding the zip, or the ratings file
    itself: ``u.data`` (tab separated), ``ratings.dat`` (``::`` separated) or ``ratings.csv``
    (header ``userId,movieId,rating,timestamp``). Zips are read in place, never extracted.

    Example::

        df = read_movielens("data/raw/ml-latest-small.zip")   # 100,836 rows, 610 users
    """
    src = _movielens_ratings(_existing(path, "a MovieLens .zip, its folder or its ratings file"))
    first = _first_line(src)
    if first is None:
        raise RecvaeError(f"{src.label}: empty file; expected MovieLens ratings")
    if "::" in first:
        # ratings.dat separates fields with "::", which pyarrow cannot take (one-character
        # separators only). Splitting on ":" yields an empty field between each pair of numbers;
        # typing those as null makes pyarrow reject any line whose separators are not exactly
        # "::", without copying the file or falling back to a slow regex parser.
        columns = {
            "UserID": pa.int64(),
            ":1": pa.null(),
            "MovieID": pa.int64(),
            ":2": pa.null(),
            "Rating": pa.float64(),
            ":3": pa.null(),
            "Timestamp": pa.int64(),
        }
        table = _read_csv(src, columns, delimiter=":", what="UserID::MovieID::Rating::Timestamp")
        names, header_lines = ["UserID", "MovieID", "Rating", "Timestamp"], 0
    elif first.startswith("userId,"):
        names = ["userId", "movieId", "rating", "timestamp"]
        found = _split_header(first, ",")
        if found != names:
            raise RecvaeError(
                f"{src.label}, line 1: expected the header {','.join(names)}, found columns {found}"
            )
        columns = dict(zip(names, (pa.int64(), pa.int64(), pa.float64(), pa.int64()), strict=True))
        table = _read_csv(src, columns, skip_rows=1, what="userId,movieId,rating,timestamp")
        header_lines = 1
    elif "\t" in first:
        names = ["user id", "item id", "rating", "timestamp"]
        columns = dict(zip(names, (pa.int64(), pa.int64(), pa.float64(), pa.int64()), strict=True))
        what = "user id<TAB>item id<TAB>rating<TAB>timestamp"
        table = _read_csv(src, columns, delimiter="\t", what=what)
        header_lines = 0
    else:
        raise RecvaeError(
            f"{src.label}, line 1: not MovieLens ratings; expected u.data (tab separated), "
            f"ratings.dat ('::' separated) or ratings.csv (header userId,movieId,rating,timestamp),"
            f" got {_clip(first)!r}"
        )
    _require_rows(src.label, table)
    user, item, rating, ts = (table.column(n) for n in names)
    _require_finite(rating, names[2], _csv_where(src, header_lines))
    return _frame(user, item, rating, timestamp=ts)


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


def read_msd(path: str | os.PathLike) -> pd.DataFrame:
    """Million Song Dataset Taste Profile: user (str), item (song id, str), value (play count).

    ``path`` is ``train_triplets.txt``: ``user<TAB>song<TAB>count``, no header (``.gz`` works too).

    Example::

        df = read_msd("data/raw/train_triplets.txt")   # 48,373,586 rows
    """
    src = _file_source(_existing(path, "the Taste Profile train_triplets.txt", want_file=True))
    columns = {"user": pa.string(), "song": pa.string(), "play_count": pa.int64()}
    table = _read_csv(src, columns, delimiter="\t", what="user<TAB>song<TAB>play_count")
    _require_rows(src.label, table)
    where = _csv_where(src, 0)
    for name in ("user", "song"):
        _require_nonempty_ids(table.column(name), name, where)
    return _frame(table.column("user"), table.column("song"), table.column("play_count"))


def read_lightgcn(path: str | os.PathLike) -> pd.DataFrame:
    """A LightGCN-style predefined split: user, item, value 1.0, part ("train" / "test").

    ``path`` is a folder with ``train.txt`` and ``test.txt``, one line per user:
    ``user item item ...`` (space separated; a user without items may be just ``user``). Where
    ``user_list.txt`` / ``item_list.txt`` (``org_id remap_id`` with a header) lie beside them,
    the remapped ids are mapped back to the original ids.

    Example::

        df = read_lightgcn("data/raw/gowalla")   # 810,128 train + 217,242 test rows
    """
    root = _existing(path, "a folder with train.txt and test.txt")
    if not root.is_dir():
        raise RecvaeError(f"{root}: not a folder; expected a folder with train.txt and test.txt")
    files = {part: root / f"{part}.txt" for part in ("train", "test")}
    for file in files.values():
        if not file.is_file():
            raise RecvaeError(
                f"{file}: no such file; a LightGCN folder needs train.txt and test.txt"
            )
    user_map = _read_id_map(root / "user_list.txt")
    item_map = _read_id_map(root / "item_list.txt")

    users, items, parts = [], [], []
    for code, file in enumerate(files.values()):
        src = _file_source(file)
        tokens = _read_id_lines(src, "lines 'user item item ...'")
        flat = tokens.flatten().to_numpy()
        lengths = pc.list_value_length(tokens).to_numpy()
        heads = tokens.offsets.to_numpy()[:-1][lengths > 0]  # first token of each non-empty line
        n_items = lengths[lengths > 0] - 1
        is_item = np.ones(len(flat), dtype=bool)
        is_item[heads] = False
        line_of = pc.list_parent_indices(tokens).to_numpy()[is_item]
        users.append(_remap(np.repeat(flat[heads], n_items), user_map, "user", src.label, line_of))
        items.append(_remap(flat[is_item], item_map, "item", src.label, line_of))
        parts.append(np.full(len(line_of), code, dtype=np.int8))
    user, item = _concat(users), _concat(items)
    part = pa.DictionaryArray.from_arrays(np.concatenate(parts), list(files)).cast(pa.string())
    return _frame(user, item, np.ones(len(item)), part=part)


def read_citeulike(path: str | os.PathLike) -> pd.DataFrame:
    """CiteULike ``users.dat``: user (the 0-based line number), item (article id), value 1.0.

    Line u is ``n item item ...``: user u's library of n articles (0-based article ids).

    Example::

        df = read_citeulike("data/raw/citeulike-a/users.dat")   # 204,986 rows, 5,551 users
    """
    src = _file_source(_existing(path, "a citeulike users.dat", want_file=True))
    tokens = _read_id_lines(src, "lines 'n item item ...'")
    lengths = pc.list_value_length(tokens).to_numpy()
    if (lengths == 0).any():
        line = int(np.argmax(lengths == 0)) + 1
        raise RecvaeError(
            f"{src.label}, line {line}: empty line; expected 'n item item ...' "
            f"(the count n, then n article ids; '0' for an empty library)"
        )
    starts = tokens.offsets.to_numpy()[:-1]
    flat = tokens.flatten().to_numpy()
    counts = flat[starts]
    bad = np.flatnonzero(counts != lengths - 1)
    if len(bad):
        u = bad[0]
        raise RecvaeError(
            f"{src.label}, line {u + 1}: the count is {counts[u]} but the line lists "
            f"{lengths[u] - 1} article id(s)"
        )
    is_item = np.ones(len(flat), dtype=bool)
    is_item[starts] = False
    users = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths - 1)
    return _frame(users, flat[is_item], np.ones(len(users)))


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


# The one registry of readers: ``data.source`` → reader.
SOURCES: dict[str, Callable[..., pd.DataFrame]] = {
    "movielens": read_movielens,
    "netflix": read_netflix,
    "msd": read_msd,
    "lightgcn": read_lightgcn,
    "citeulike": read_citeulike,
    "table": read_table,
}


# =========================================================================== inputs
@dataclass(frozen=True)
class _Source:
    """A byte stream to parse, opened afresh on each call, and how to name its lines.

    ``line_of_record`` turns pyarrow's record number (1-based, empty lines not counted) into
    ``"FILE, line N"``; by default it counts the empty lines back in.
    """

    label: str
    open: Callable[[], contextlib.AbstractContextManager[Any]]
    line_of_record: Callable[[int], str] | None = None

    def place(self, record: int) -> str:
        if self.line_of_record is not None:
            return self.line_of_record(record)
        return f"{self.label}, line {_physical_line(self, record)}"


def _existing(path: str | os.PathLike, expected: str, *, want_file: bool = False) -> Path:
    p = Path(path)
    if not p.exists():
        raise RecvaeError(f"{p}: no such file or folder; expected {expected}")
    if want_file and not p.is_file():
        raise RecvaeError(f"{p}: not a file; expected {expected}")
    return p


# What pyarrow's compression="detect" decompresses, by suffix, and how such a file starts.
_COMPRESSED = {
    ".gz": ("gzip", b"\x1f\x8b"),
    ".bz2": ("bzip2", b"BZh"),
    ".zst": ("zstd", b"\x28\xb5\x2f\xfd"),
    ".lz4": ("lz4", b"\x04\x22\x4d\x18"),
}
_BOM = b"\xef\xbb\xbf"


def _check_compressed(path: Path) -> str | None:
    """The compression a suffix promises (None for plain text), checked against the file's
    first bytes, so a plain file named ``.gz`` is one clear error, not zlib's."""
    kind = _COMPRESSED.get(path.suffix.lower())
    if kind is None:
        return None
    name, magic = kind
    try:
        with open(path, "rb") as f:
            head = f.read(len(magic))
    except OSError as e:
        raise RecvaeError(f"{path}: cannot read ({e.strerror or e})") from None
    if head != magic:
        found = "it is empty" if not head else f"it starts with {head!r}"
        raise RecvaeError(
            f"{path}: named {path.suffix} but not {name}-compressed ({found}); rename it without "
            f"{path.suffix}, or compress it"
        )
    return name


def _file_source(path: Path) -> _Source:
    compression = _check_compressed(path)

    @contextlib.contextmanager
    def open_file() -> Iterator[Any]:
        # compression="detect" decompresses by suffix (.gz, .bz2, .zst, .lz4), inside pyarrow,
        # which raises OSError for a truncated or corrupt stream, wherever the parse is.
        try:
            with pa.input_stream(str(path), compression="detect") as f:
                yield f
        except OSError as e:
            what = f"corrupt or truncated {compression} data" if compression else "cannot read"
            raise RecvaeError(f"{path}: {what} ({_clip(str(e), 120)})") from None

    return _Source(str(path), open_file)


def _zip_source(path: Path, member: str, info: zipfile.ZipInfo) -> _Source:
    if info.flag_bits & 0x1:
        raise RecvaeError(f"{path}: {member} is encrypted; expected an unencrypted zip")
    if info.compress_type not in _ZIP_METHODS:
        raise RecvaeError(
            f"{path}: {member} uses zip compression method {info.compress_type}, which Python "
            f"cannot read; expected stored, deflate, bzip2 or lzma (re-zip it)"
        )

    @contextlib.contextmanager
    def open_member() -> Iterator[Any]:
        try:
            with zipfile.ZipFile(path) as zf, zf.open(member) as f:
                yield f
        except (zipfile.BadZipFile, zlib.error, EOFError) as e:
            raise RecvaeError(f"{path}: corrupt zip, cannot read {member} ({e})") from None

    return _Source(f"{path}:{member}", open_member)


_ML_RATINGS = ("ratings.csv", "ratings.dat", "u.data")
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)


def _movielens_ratings(path: Path) -> _Source:
    if path.is_dir():
        found = [path / n for n in _ML_RATINGS if (path / n).is_file()]
        if not found:
            subdirs = sorted(p for p in path.iterdir() if p.is_dir())
            found = [d / n for d in subdirs for n in _ML_RATINGS if (d / n).is_file()]
        if not found:
            found = sorted(path.glob("*.zip"))
        if len(found) != 1:
            what = ("several: " + ", ".join(str(p) for p in found)) if found else "none"
            raise RecvaeError(
                f"{path}: expected one MovieLens ratings file (ratings.csv, ratings.dat, u.data) "
                f"in the folder or a subfolder, or one .zip; found {what}"
            )
        path = found[0]
    if path.suffix.lower() != ".zip" and not zipfile.is_zipfile(path):
        return _file_source(path)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = {i.filename: i for i in zf.infolist()}
    except (zipfile.BadZipFile, OSError) as e:
        raise RecvaeError(f"{path}: not a valid zip file ({e})") from None
    members = list(infos)
    for name in _ML_RATINGS:
        hits = sorted((m for m in members if m.rsplit("/", 1)[-1] == name), key=len)
        if hits:
            return _zip_source(path, hits[0], infos[hits[0]])
    listed = ", ".join(members[:8]) + (", ..." if len(members) > 8 else "")
    raise RecvaeError(
        f"{path}: the zip holds no MovieLens ratings file (ratings.csv, ratings.dat or u.data); "
        f"members: {listed or 'none'}"
    )


def _first_line(src: _Source) -> str | None:
    """The first line without its newline, or None for an empty file."""
    with src.open() as f:
        head = f.read(1 << 16)
    if not head:
        return None
    # A UTF-8 byte-order mark (Excel's "CSV UTF-8") is not part of the first column's name;
    # pyarrow skips it in the data too.
    head = head.removeprefix(_BOM)
    return head.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", errors="replace")


def _split_header(line: str, sep: str) -> list[str]:
    return next(csv.reader([line], delimiter=sep)) if line else []


def _clip(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[:n] + "..."


# =========================================================================== CSV core
_CONVERSION_ERROR = re.compile(
    r"In CSV column #(\d+): (?:Row #(\d+): )?CSV conversion error to (.+?): invalid value '(.*)'$",
    re.S,
)
_COUNT_ERROR = re.compile(
    r"CSV parse error: (?:Row #(\d+): )?Expected (\d+) columns, got (\d+): (.*)$", re.S
)
_EXPECTED = {
    "int64": "an integer",
    "double": "a number",
    "date32[day]": "a date YYYY-MM-DD",
    "null": "'::' between fields",
}


def _read_csv(
    src: _Source,
    columns: dict[str, pa.DataType | None],
    *,
    what: str,
    delimiter: str = ",",
    skip_rows: int = 0,
    quoting: bool = False,
    include: list[str] | None = None,
    invalid_row_handler: Callable[[Any], str] | None = None,
    missing_ok: bool = False,
    use_threads: bool = True,
) -> pa.Table:
    """Parse ``src`` with pyarrow into the typed ``columns`` (all fields of a line, in order).

    A field typed ``None`` is left unconverted (use ``include`` to drop it). A malformed line or
    (unless ``missing_ok``) an empty field raises a RecvaeError naming the line and the column
    and saying what a line should look like (``what``).
    """
    read = pacsv.ReadOptions(
        column_names=list(columns), skip_rows=skip_rows, use_threads=use_threads, block_size=1 << 24
    )
    parse = pacsv.ParseOptions(
        delimiter=delimiter,
        quote_char='"' if quoting else False,
        invalid_row_handler=invalid_row_handler,
    )
    convert = pacsv.ConvertOptions(
        column_types={k: v for k, v in columns.items() if v is not None},
        include_columns=include,
        null_values=[""],
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    try:
        with src.open() as f:
            table = pacsv.read_csv(f, read, parse, convert)
    except pa.ArrowInvalid as e:
        message = str(e)
    else:
        if not missing_ok:
            for name in table.column_names:
                col = table.column(name)
                if col.null_count and col.type != pa.null():
                    row = _first_true(col.is_null())
                    raise RecvaeError(
                        f"{src.place(row + 1 + skip_rows)}, column {name!r}: missing value"
                    )
        return table
    m = _CONVERSION_ERROR.search(message) or _COUNT_ERROR.search(message)
    if m and use_threads and "Row #" not in message:
        # The multithreaded parser does not say which row failed; the single-threaded one does.
        # Parsing again costs a few seconds, and only ever on the way to an error.
        _read_csv(
            src,
            columns,
            what=what,
            delimiter=delimiter,
            skip_rows=skip_rows,
            quoting=quoting,
            include=include,
            invalid_row_handler=invalid_row_handler,
            missing_ok=missing_ok,
            use_threads=False,
        )
    raise _csv_error(src, message, list(columns), what)


def _csv_error(src: _Source, message: str, names: list[str], what: str) -> RecvaeError:
    if "Empty CSV file" in message:
        return RecvaeError(f"{src.label}: empty file; expected lines {what}")
    if m := _CONVERSION_ERROR.search(message):
        col, row, to_type, value = int(m[1]), m[2], m[3], m[4]
        place = src.place(int(row)) if row else src.label
        expected = _EXPECTED.get(to_type, to_type)
        return RecvaeError(
            f"{place}, column {names[col]!r}: expected {expected}, got {_clip(value)!r}"
        )
    if m := _COUNT_ERROR.search(message):
        row, want, got, text = m[1], int(m[2]), int(m[3]), m[4]
        place = src.place(int(row)) if row else src.label
        return RecvaeError(
            f"{place}: expected {what} ({want} fields), got {got} field(s): {_clip(text)!r}"
        )
    return RecvaeError(f"{src.label}: cannot parse ({_clip(message, 200)}); expected {what}")


def _physical_line(src: _Source, record: int) -> int:
    """The 1-based physical line of pyarrow's record number ``record`` (empty lines skipped).

    Streams the file in blocks with numpy; used only to word an error.
    """
    seen = lines = 0
    carry = b""
    with src.open() as f:
        while chunk := f.read(1 << 24):
            buf = carry + chunk
            arr = np.frombuffer(buf, dtype=np.uint8)
            newlines = np.flatnonzero(arr == 10)
            if len(newlines) == 0:
                carry = buf
                continue
            starts = np.concatenate(([0], newlines[:-1] + 1))
            lengths = newlines - starts
            empty = (lengths == 0) | ((lengths == 1) & (arr[starts] == 13))
            nonempty = np.cumsum(~empty)
            if seen + nonempty[-1] >= record:
                return lines + int(np.searchsorted(nonempty, record - seen)) + 1
            seen += int(nonempty[-1])
            lines += len(newlines)
            carry = buf[newlines[-1] + 1 :]
    return lines + 1


def _csv_where(src: _Source, header_lines: int) -> Where:
    return lambda i: src.place(i + 1 + header_lines)


def _require_rows(label: str, table: pa.Table) -> None:
    if table.num_rows == 0:
        raise RecvaeError(f"{label}: empty file (no interactions)")


def _first_true(mask: pa.ChunkedArray | pa.Array) -> int:
    return int(pc.index(mask, True).as_py())


def _require_finite(values: Any, name: str, where: Where) -> None:
    if not isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = pa.array(values)
    finite = pc.is_finite(values)
    if not pc.all(finite).as_py():
        i = _first_true(pc.invert(finite))
        raise RecvaeError(f"{where(i)}, column {name!r}: expected a finite number, got {values[i]}")


def _require_nonempty_ids(col: pa.ChunkedArray, name: str, where: Where) -> None:
    empty = pc.equal(pc.utf8_length(col), 0)
    if pc.any(empty).as_py():
        raise RecvaeError(f"{where(_first_true(empty))}, column {name!r}: empty id")


# =========================================================================== netflix
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
    """A whole (small) file without its byte-order mark; an unreadable one is a RecvaeError."""
    try:
        return path.read_bytes().removeprefix(_BOM)
    except OSError as e:
        raise RecvaeError(f"{path}: cannot read ({e.strerror or e})") from None


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


# =========================================================================== one line per user
def _read_id_lines(src: _Source, what: str) -> pa.ListArray:
    """Every line split into non-negative int64 ids; list index + 1 is the line number."""
    read = pacsv.ReadOptions(column_names=["line"], block_size=1 << 24)
    # These files have no field separator that pyarrow understands (one space-separated list per
    # line), so each whole line is read as one string ("\x1f" never occurs) and split below.
    parse = pacsv.ParseOptions(delimiter="\x1f", quote_char=False, ignore_empty_lines=False)
    convert = pacsv.ConvertOptions(column_types={"line": pa.string()}, strings_can_be_null=False)
    try:
        with src.open() as f:
            lines = pacsv.read_csv(f, read, parse, convert).column("line").combine_chunks()
    except pa.ArrowInvalid as e:
        if "Empty CSV file" in str(e):
            raise RecvaeError(f"{src.label}: empty file; expected {what}") from None
        raise RecvaeError(f"{src.label}: cannot read ({_clip(str(e), 200)})") from None
    # Splitting a trimmed empty line yields one empty token: drop those so empty lines are empty.
    tokens = pc.utf8_split_whitespace(pc.utf8_trim_whitespace(lines))
    nonempty = pc.greater(pc.utf8_length(tokens.flatten()), 0)
    flat = tokens.flatten().filter(nonempty)
    line_of = pc.list_parent_indices(tokens).filter(nonempty).to_numpy()
    ok = pc.match_substring_regex(flat, _UINT_TOKEN)
    if not pc.all(ok).as_py():
        i = _first_true(pc.invert(ok))
        raise RecvaeError(
            f"{src.label}, line {line_of[i] + 1}: expected {what} (non-negative integers separated "
            f"by spaces), got {_clip(flat[i].as_py())!r}"
        )
    offsets = np.concatenate(([0], np.cumsum(np.bincount(line_of, minlength=len(lines)))))
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pc.cast(flat, pa.int64()))


def _read_id_map(path: Path) -> tuple[pd.Index, np.ndarray] | None:
    """``org_id remap_id`` file → (remapped ids as an index, original ids), or None if absent."""
    if not path.exists():
        return None
    src = _file_source(path)
    first = _first_line(src)
    found = first.split() if first else []
    if found[:2] != ["org_id", "remap_id"]:
        raise RecvaeError(f"{path}, line 1: expected the header 'org_id remap_id', found {found}")
    columns: dict[str, pa.DataType | None] = {n: None for n in found}
    columns.update(org_id=pa.string(), remap_id=pa.string())
    table = _read_csv(
        src,
        columns,
        what=" ".join(found),
        delimiter=" ",
        skip_rows=1,
        include=["org_id", "remap_id"],
    )
    where = _csv_where(src, 1)
    remap = table.column("remap_id")
    ok = pc.match_substring_regex(remap, _UINT_TOKEN)
    if not pc.all(ok).as_py():
        i = _first_true(pc.invert(ok))
        raise RecvaeError(
            f"{where(i)}, column 'remap_id': expected an integer, got {remap[i].as_py()!r}"
        )
    index = pd.Index(remap.cast(pa.int64()).to_numpy())
    if index.has_duplicates:
        raise RecvaeError(f"{path}: remap_id {index[index.duplicated()][0]} appears twice")
    org = _ids(table.column("org_id"), "org_id", where)
    return index, org.to_numpy(zero_copy_only=False)


def _remap(
    ids: np.ndarray,
    mapping: tuple[pd.Index, np.ndarray] | None,
    what: str,
    label: str,
    line_of: np.ndarray,
) -> np.ndarray:
    if mapping is None:
        return ids
    index, org = mapping
    pos = index.get_indexer(ids)
    if (pos < 0).any():
        i = int(np.argmax(pos < 0))
        raise RecvaeError(
            f"{label}, line {line_of[i] + 1}: {what} {ids[i]} is not in {what}_list.txt"
        )
    return org[pos]


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    if any(a.dtype == object for a in arrays):
        return np.concatenate([a.astype(object) for a in arrays])
    return np.concatenate(arrays)


# =========================================================================== generic tables
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


def _ids(col: pa.ChunkedArray, name: str, where: Where) -> pa.ChunkedArray:
    """Integer ids as int64; text ids as int64 when every one is a canonical integer, else str."""
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if pa.types.is_integer(col.type):
        return col.cast(pa.int64())
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        col = col.cast(pa.string())
        _require_nonempty_ids(col, name, where)
        if pc.all(pc.match_substring_regex(col, _INT_ID)).as_py():
            return col.cast(pa.int64())
        return col
    raise RecvaeError(f"{where(0)}, column {name!r}: type {col.type}; expected integer or text ids")


def _numbers(col: pa.ChunkedArray, name: str, where: Where) -> Any:
    t = col.type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        return col.cast(pa.float64())
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        values = pd.to_numeric(pd.Series(col.to_numpy(zero_copy_only=False)), errors="coerce")
        bad = values.isna().to_numpy()
        if bad.any():
            i = int(np.argmax(bad))
            raise RecvaeError(
                f"{where(i)}, column {name!r}: expected a number, got {col[i].as_py()!r}"
            )
        return values.to_numpy(dtype=np.float64)
    raise RecvaeError(f"{where(0)}, column {name!r}: type {t}; expected numbers")


def _timestamps(col: pa.ChunkedArray, name: str, where: Where) -> Any:
    """Epoch seconds (int64) from integers, timestamps, dates or ISO-8601 text."""
    t = col.type
    if pa.types.is_integer(t):
        return col.cast(pa.int64())
    if pa.types.is_timestamp(t):
        return col.cast(pa.timestamp("s", tz=t.tz), safe=False).cast(pa.int64())
    if pa.types.is_date(t):
        return col.cast(pa.date32()).cast(pa.int32()).to_numpy().astype(np.int64) * 86400
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        if pc.all(pc.match_substring_regex(col, _INT_ID)).as_py():
            return col.cast(pa.int64())
        text = pd.Series(col.to_numpy(zero_copy_only=False))
        parsed = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
        bad = parsed.isna().to_numpy()
        if bad.any():
            i = int(np.argmax(bad))
            raise RecvaeError(
                f"{where(i)}, column {name!r}: expected epoch seconds or an ISO-8601 date/time, "
                f"got {text.iloc[i]!r}"
            )
        return parsed.astype("datetime64[s, UTC]").astype("int64").to_numpy()
    raise RecvaeError(f"{where(0)}, column {name!r}: type {t}; expected epoch seconds or dates")


# =========================================================================== output
def _frame(
    user: Any, item: Any, value: Any, *, timestamp: Any = None, part: Any = None
) -> pd.DataFrame:
    columns = {
        "user": _column(user),
        "item": _column(item),
        "value": np.asarray(_column(value), dtype=np.float64),
    }
    if timestamp is not None:
        columns["timestamp"] = np.asarray(_column(timestamp), dtype=np.int64)
    if part is not None:
        columns["part"] = _column(part)
    return pd.DataFrame(columns, copy=False)


def _column(values: Any) -> Any:
    """Numbers as a numpy array; text ids as a pandas string array."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            return values.to_pandas().array
        return values.to_numpy()
    arr = np.asarray(values)
    return pd.array(arr, dtype="str") if arr.dtype == object else arr
