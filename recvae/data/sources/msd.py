"""The Million Song Dataset's Taste Profile: ``user<TAB>song<TAB>play_count`` triplets."""

from __future__ import annotations

import os

import pandas as pd
import pyarrow as pa

from recvae.data.sources.engine import (
    _csv_where,
    _existing,
    _file_source,
    _frame,
    _read_csv,
    _require_rows,
    _require_text_ids,
)


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
        _require_text_ids(table.column(name), name, where)
    return _frame(table.column("user"), table.column("song"), table.column("play_count"))
