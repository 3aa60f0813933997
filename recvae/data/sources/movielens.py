"""MovieLens ratings: the official zips, their folders, or one ratings file."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pandas as pd
import pyarrow as pa

from recvae.data.sources.engine import (
    _clip,
    _csv_where,
    _existing,
    _file_source,
    _first_line,
    _frame,
    _read_csv,
    _require_finite,
    _require_rows,
    _Source,
    _split_header,
    _zip_source,
)
from recvae.errors import RecvaeError

_ML_RATINGS = ("ratings.csv", "ratings.dat", "u.data")


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
