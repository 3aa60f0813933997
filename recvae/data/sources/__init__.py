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
Text must be UTF-8 (a UTF-8 byte-order mark is skipped): a UTF-16 or UTF-32 file is one error
naming the encoding found, other bytes that are not UTF-8 one naming the line, and an id with a
NUL byte one naming the line and the column.

One module per format family, over one engine (:mod:`recvae.data.sources.engine`):

    engine.py     the CSV/arrow engine: inputs, typed parsing, errors, column checks, the frame
    movielens.py  ml-100k … ml-32m zips, folders, u.data / ratings.dat / ratings.csv
    netflix.py    training_set/mv_*.txt, combined_data_*.txt
    msd.py        the Taste Profile's train_triplets.txt
    lightgcn.py   one line per user: LightGCN's train.txt / test.txt, CiteULike's users.dat
    table.py      a generic CSV / TSV / Parquet table with a header

Example::

    ratings = read_source("movielens", "data/raw/ml-20m.zip")
    events = read_table("events.csv.gz", user_col="customer", item_col="sku", value_col="qty")
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pandas as pd

from recvae.data.sources.lightgcn import read_citeulike, read_lightgcn
from recvae.data.sources.movielens import read_movielens
from recvae.data.sources.msd import read_msd
from recvae.data.sources.netflix import read_netflix
from recvae.data.sources.table import TABLE_FORMATS, TABLE_OPTIONS, read_table
from recvae.errors import RecvaeError

__all__ = [
    "SOURCES",
    "TABLE_FORMATS",
    "TABLE_OPTIONS",
    "check_options",
    "read_citeulike",
    "read_lightgcn",
    "read_movielens",
    "read_msd",
    "read_netflix",
    "read_source",
    "read_table",
]


# The one registry of readers: ``data.source`` → reader.
SOURCES: dict[str, Callable[..., pd.DataFrame]] = {
    "movielens": read_movielens,
    "netflix": read_netflix,
    "msd": read_msd,
    "lightgcn": read_lightgcn,
    "citeulike": read_citeulike,
    "table": read_table,
}


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
