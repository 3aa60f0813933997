"""Logs of one line per user, ``user item item ...`` (LightGCN's train.txt / test.txt) or
``n item item ...`` (CiteULike's users.dat), and LightGCN's ``org_id remap_id`` id maps.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from recvae.data.sources.engine import (
    _UINT_TOKEN,
    _clip,
    _csv_where,
    _existing,
    _file_source,
    _first_line,
    _first_non_utf8,
    _first_true,
    _frame,
    _ids,
    _not_utf8,
    _read_csv,
    _Source,
)
from recvae.errors import RecvaeError


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
        if "invalid UTF8" in str(e) and (found := _first_non_utf8(src)):
            raise RecvaeError(_not_utf8(f"{src.label}, line {found[0]}", found[1])) from None
        raise RecvaeError(f"{src.label}: cannot read ({_clip(str(e), 200)})") from None
    # Splitting a trimmed empty line yields one empty token: drop those so empty lines are empty.
    tokens = pc.utf8_split_whitespace(pc.utf8_trim_whitespace(lines))
    nonempty = pc.greater(pc.utf8_length(tokens.flatten()), 0)
    flat = tokens.flatten().filter(nonempty)
    line_of = pc.list_parent_indices(tokens).filter(nonempty).to_numpy()
    ok = pc.match_substring_regex(flat, _UINT_TOKEN)
    if not pc.all(ok).as_py():
        i = _first_true(pc.invert(ok))
        token = flat[i].as_py()
        nul = "NUL byte in the id; " if "\x00" in token else ""
        raise RecvaeError(
            f"{src.label}, line {line_of[i] + 1}: {nul}expected {what} (non-negative integers "
            f"separated by spaces), got {_clip(token)!r}"
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
