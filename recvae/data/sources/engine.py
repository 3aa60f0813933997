"""The CSV/arrow engine under every reader: bytes in, typed and checked arrow columns out.

Text is parsed by pyarrow's multithreaded CSV reader with explicit column types; nothing loops
over lines in Python. Problems raise :class:`~recvae.errors.RecvaeError` with one line naming the
file, the line (1-based, counting every physical line) and the column, and what was expected.

- inputs: :class:`_Source` (a file, a gzip/bz2/zstd/lz4 stream or a zip member, opened afresh
  on each pass, with the wording of its lines, refused when it starts as UTF-16 or UTF-32
  text), the first line, the header;
- :func:`_read_csv`: typed columns of a delimited text, and the wording of pyarrow's errors;
- checks and conversions of parsed columns (ids, numbers, timestamps) that both the readers of
  this package and the streamed ``table`` source (:mod:`recvae.data.tables`) apply;
- :func:`_frame`: the tidy DataFrame every reader returns (see :mod:`recvae.data.sources`).

The names keep their leading underscore: they are this package's internals, shared with
``recvae.data.tables`` and ``recvae.data.interactions`` only, never a public API.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
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

from recvae.errors import RecvaeError

# Text ids written as canonical integers ("0", "42", "-7"; at most 18 digits, so they fit int64)
# become int64; anything else ("007", "u1", "1.0") stays a string, so no id is ever altered.
_INT_ID = r"^(0|-?[1-9][0-9]{0,17})$"
_UINT_TOKEN = r"^[0-9]{1,18}$"

Where = Callable[[int], str]  # row index of a parsed table -> "FILE, line N" (or "FILE, row N")


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

    return _require_utf8_start(_Source(str(path), open_file))


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

    return _require_utf8_start(_Source(f"{path}:{member}", open_member))


_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)


def _first_line(src: _Source) -> str | None:
    """The first line without its newline, or None for an empty file; a first line that is not
    UTF-8 is a RecvaeError."""
    with src.open() as f:
        head = f.read(1 << 16)
    if not head:
        return None
    # A UTF-8 byte-order mark (Excel's "CSV UTF-8") is not part of the first column's name;
    # pyarrow skips it in the data too.
    line = head.removeprefix(_BOM).split(b"\n", 1)[0].rstrip(b"\r")
    try:
        # not final: a character cut where the 64 KiB end is no error
        return codecs.getincrementaldecoder("utf-8")().decode(line)
    except UnicodeDecodeError as e:
        raise RecvaeError(_not_utf8(f"{src.label}, line 1", line[e.start : e.end])) from None


# Byte-order marks of the encodings that are not UTF-8, longest first (UTF-32-LE's begins with
# UTF-16-LE's), with their names as iconv spells them.
_FOREIGN_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32 (little-endian)", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32 (big-endian)", "UTF-32"),
    (b"\xff\xfe", "UTF-16 (little-endian)", "UTF-16"),
    (b"\xfe\xff", "UTF-16 (big-endian)", "UTF-16"),
)


def _require_utf8_start(src: _Source) -> _Source:
    """``src``, unless it starts as UTF-16 or UTF-32 text (:func:`_require_utf8_head`)."""
    with src.open() as f:
        _require_utf8_head(src.label, f.read(1 << 12))
    return src


def _require_utf8_head(label: str, head: bytes) -> None:
    """Raise a RecvaeError naming the encoding if ``head``, the first bytes of the file
    ``label``, is UTF-16 or UTF-32 text.

    pyarrow would read such a file as UTF-8 whose every other byte is NUL, and the reader's
    error would be about a column name or an id full of NULs. Known by the byte-order mark
    (Windows tools write one), or without one by NUL bytes at every other byte of line 1.
    """
    for bom, name, iconv in _FOREIGN_BOMS:
        if head.startswith(bom):
            raise RecvaeError(
                f"{label}: {name} text (byte-order mark {bom.hex(' ').upper()}); {_reencode(iconv)}"
            )
    line = head.split(b"\n", 1)[0][:256]
    if len(line) < 4:  # too short to tell
        return
    even, odd = (line[k::2].count(0) / len(line[k::2]) for k in (0, 1))
    if even >= 0.5 and odd >= 0.5:
        raise RecvaeError(
            f"{label}, line 1: mostly NUL bytes, not UTF-8 text (UTF-32, or a binary file?); "
            f"expected UTF-8 text"
        )
    if max(even, odd) >= 0.5:  # ASCII in UTF-16: a NUL beside every character
        order, iconv = ("little", "UTF-16LE") if odd > even else ("big", "UTF-16BE")
        raise RecvaeError(
            f"{label}: UTF-16 ({order}-endian) text without a byte-order mark (a NUL byte "
            f"beside every character of line 1); {_reencode(iconv)}"
        )


def _reencode(encoding: str) -> str:
    return f"expected UTF-8: re-encode it, e.g. iconv -f {encoding} -t UTF-8"


def _not_utf8(place: str, bad: bytes) -> str:
    """The error of bytes ``bad`` that are not UTF-8 text, at ``place`` ("FILE, line N")."""
    return (
        f"{place}: not UTF-8 text (bytes {bad!r}); {_reencode('WINDOWS-1252')} if it is "
        f"Windows or Latin-1 text"
    )


def _first_non_utf8(src: _Source) -> tuple[int, bytes] | None:
    """(1-based line, the bytes) of the first bytes of ``src`` that are not UTF-8, or None.

    Streams the file in blocks; used only to word an error.
    """
    lines = 0
    carry = b""
    with src.open() as f:
        while True:
            chunk = f.read(1 << 24)
            buf = carry + chunk
            carry = b""
            try:
                buf.decode("utf-8")
            except UnicodeDecodeError as e:
                if not (chunk and e.reason == "unexpected end of data"):
                    return lines + buf.count(b"\n", 0, e.start) + 1, buf[e.start : e.end]
                buf, carry = buf[: e.start], buf[e.start :]  # a character cut by the block
            lines += buf.count(b"\n")
            if not chunk:
                return None


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
    if "invalid UTF8" in message and src.line_of_record is None and (
        found := _first_non_utf8(src)
    ):
        return RecvaeError(_not_utf8(f"{src.label}, line {found[0]}", found[1]))
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


def _require_text_ids(col: pa.ChunkedArray | pa.Array, name: str, where: Where) -> None:
    """Raise at the first empty id, or id with a NUL byte, of a text column (a NUL byte would
    turn every id of the column into text, and one id into a different one)."""
    empty = pc.equal(pc.utf8_length(col), 0)
    if pc.any(empty).as_py():
        raise RecvaeError(f"{where(_first_true(empty))}, column {name!r}: empty id")
    if not _may_hold_nul(col):
        return
    nul = pc.match_substring(col, "\x00")  # ~0.3 GB/s: only where a NUL may be
    if pc.any(nul).as_py():
        i = _first_true(nul)
        raise RecvaeError(
            f"{where(i)}, column {name!r}: NUL byte in the id {_clip(col[i].as_py())!r}; "
            f"expected an integer or text id without NUL bytes"
        )


def _may_hold_nul(col: pa.ChunkedArray | pa.Array) -> bool:
    """Whether the character data of a text column (its whole buffers, which may hold more than
    the column) has a NUL byte: one vectorised pass at memory speed."""
    for chunk in col.chunks if isinstance(col, pa.ChunkedArray) else [col]:
        data = chunk.buffers()[2]
        if data is not None and data.size and np.frombuffer(data, dtype=np.uint8).min() == 0:
            return True
    return False


# =========================================================================== columns
def _ids(col: pa.ChunkedArray, name: str, where: Where) -> pa.ChunkedArray:
    """Integer ids as int64; text ids as int64 when every one is a canonical integer, else str."""
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if pa.types.is_integer(col.type):
        return col.cast(pa.int64())
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        col = col.cast(pa.string())
        _require_text_ids(col, name, where)
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
