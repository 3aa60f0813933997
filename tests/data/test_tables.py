"""Tests for recvae.data.tables: folders of Parquet / CSV parts as Spark and Dask write them.

The acceptance check: a folder of parts ingests to the same dataset (same digest of the CSR
arrays, user rows and id maps) as the single file it was cut from, for several layouts.
"""

from __future__ import annotations

import gzip
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_ratings

from recvae.cli import main
from recvae.data import tables
from recvae.data.dataset import Dataset
from recvae.data.ingest import ingest
from recvae.data.spec import DataConfig, PreprocessConfig, SplitConfig
from recvae.data.tables import find_parts, scan_table
from recvae.errors import RecvaeError

OPTIONS = {"user_col": "u", "item_col": "i", "value_col": "r", "timestamp_col": "ts"}


def raises(pattern: str):
    return pytest.raises(RecvaeError, match=pattern)


@pytest.fixture(scope="module")
def log() -> pd.DataFrame:
    """~4,000 ratings with text user ids, a few duplicates, sorted by day (so hive folders by
    day keep the file's row order)."""
    df = make_ratings(300, 200, seed=5, max_items=40, mean_items=12)
    df = pd.concat([df, df.sample(frac=0.03, random_state=1)], ignore_index=True)
    # ~20 distinct days, so hive layouts have ~20 folders
    day = df["timestamp"] // (86400 * 60) * (86400 * 60)
    df["day"] = pd.to_datetime(day, unit="s").dt.strftime("%Y-%m-%d")
    df = df.sort_values("day", kind="stable").reset_index(drop=True)
    return pd.DataFrame({
        "u": "u" + df["user"].astype(str), "i": df["item"], "r": df["value"],
        "ts": df["timestamp"], "day": df["day"],
    })


def write_parquet(df: pd.DataFrame, path: Path, row_group_size: int = 700) -> Path:
    """A Parquet file of several row groups (read one at a time) when the frame is large."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path, row_group_size=row_group_size)
    return path


def spark_markers(folder: Path) -> None:
    (folder / "_SUCCESS").write_bytes(b"")
    (folder / "_committed_8364151226").write_text("{}")
    (folder / "_started_8364151226").write_bytes(b"")
    for f in list(folder.rglob("*.parquet")) + list(folder.rglob("*.csv")):
        (f.parent / f".{f.name}.crc").write_bytes(b"\x00crc")


def spark_parts(df: pd.DataFrame, folder: Path, n: int) -> Path:
    for k, chunk in enumerate(np.array_split(np.arange(len(df)), n)):
        write_parquet(df.iloc[chunk], folder / f"part-{k:05d}-3f2a-c000.snappy.parquet")
    spark_markers(folder)
    return folder


def hive_parts(df: pd.DataFrame, folder: Path) -> Path:
    for day, rows in df.groupby("day", sort=True):
        write_parquet(rows.drop(columns="day"), folder / f"day={day}" / "part-00000-7b1c.c000.snappy.parquet")
    spark_markers(folder)
    return folder


def dask_parts(df: pd.DataFrame, folder: Path) -> Path:
    # part.10 must come after part.9: natural order, not the names' alphabetical order
    for k, chunk in enumerate(np.array_split(np.arange(len(df)), 12)):
        write_parquet(df.iloc[chunk], folder / f"part.{k}.parquet")
    write_parquet(df.iloc[:0], folder / "part.12.parquet")  # an empty partition
    pq.write_metadata(pa.Table.from_pandas(df.iloc[:0], preserve_index=False).schema,
                      folder / "_common_metadata")
    return folder


def nested_hive_parts(df: pd.DataFrame, folder: Path) -> Path:
    month = df["day"].str[:7]
    for (m, day), rows in df.groupby([month, "day"], sort=True):
        write_parquet(rows.drop(columns="day"),
                      folder / f"month={m}" / f"day={day}" / "part-00000.parquet")
    return folder


def csv_parts(df: pd.DataFrame, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for k, chunk in enumerate(np.array_split(np.arange(len(df)), 5)):
        df.iloc[chunk].to_csv(folder / f"part-{k:05d}-9d0e-c000.csv", index=False)
    (folder / "part-00005-9d0e-c000.csv").write_text("")  # an empty partition's file
    spark_markers(folder)
    return folder


def ingest_digest(path: Path, out: Path, split: SplitConfig | None = None, **options) -> str:
    data = DataConfig(
        source="table", path=str(path), out=str(out), options={**OPTIONS, **options},
        preprocess=PreprocessConfig(threshold=2.5),
        split=split or SplitConfig(method="strong", n_heldout_users=30),
    )
    ds, _ = ingest(data, force=True)
    assert ds.digest() == Dataset.load(out).digest()  # the digest is of what is on disk, too
    return ds.digest()


@pytest.mark.parametrize(
    "layout", [spark_parts, hive_parts, dask_parts, nested_hive_parts], ids=lambda f: f.__name__
)
def test_parquet_parts_ingest_to_the_single_files_dataset(
    log: pd.DataFrame, tmp_path: Path, layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tables, "BATCH_ROWS", 500)  # several batches per part
    single = write_parquet(log, tmp_path / "single.parquet")
    folder = tmp_path / "parts"
    if layout is spark_parts:
        spark_parts(log, folder, 7)
    else:
        layout(log, folder)
    expected = ingest_digest(single, tmp_path / "ds_single")
    assert ingest_digest(folder, tmp_path / "ds_parts") == expected
    assert ingest_digest(single, tmp_path / "ds_single_again") == expected


def test_every_split_gives_the_same_dataset_from_parts(log: pd.DataFrame, tmp_path: Path) -> None:
    single = write_parquet(log, tmp_path / "single.parquet")
    folder = spark_parts(log, tmp_path / "parts", 4)
    for k, split in enumerate([SplitConfig(method="random"), SplitConfig(method="temporal", leave_last=2)]):
        assert (ingest_digest(folder, tmp_path / f"p{k}", split)
                == ingest_digest(single, tmp_path / f"s{k}", split))


def test_csv_parts_ingest_to_the_single_files_dataset(log: pd.DataFrame, tmp_path: Path) -> None:
    single_csv = tmp_path / "single.csv"
    log.to_csv(single_csv, index=False)
    single_parquet = write_parquet(log, tmp_path / "single.parquet")
    folder = csv_parts(log, tmp_path / "parts")
    gzipped = tmp_path / "single.parquet.gz"  # read whole, as read_table does
    gzipped.write_bytes(gzip.compress(single_parquet.read_bytes()))
    expected = ingest_digest(single_csv, tmp_path / "ds_csv")
    assert ingest_digest(folder, tmp_path / "ds_parts") == expected
    assert ingest_digest(single_parquet, tmp_path / "ds_parquet") == expected
    assert ingest_digest(gzipped, tmp_path / "ds_gz") == expected


def test_ids_typed_by_the_whole_column(tmp_path: Path) -> None:
    # Part 0 alone would read as integer ids; part 1's "u9" makes the column text, as one file.
    df = pd.DataFrame({"u": ["1", "2", "10", "u9"], "i": ["7", "8", "7", "8"]})
    folder = tmp_path / "parts"
    folder.mkdir()
    df.iloc[:3].to_csv(folder / "part-0.csv", index=False)
    df.iloc[3:].to_csv(folder / "part-1.csv", index=False)
    out = scan_table(folder, threshold=None, user_col="u", item_col="i")
    assert out.user_ids.tolist() == ["1", "10", "2", "u9"]  # text, sorted as text
    assert out.item_ids.tolist() == [7, 8]  # canonical integers everywhere: int64
    single = write_parquet(df, tmp_path / "one.parquet")
    assert scan_table(single, threshold=None, user_col="u", item_col="i").user_ids.tolist() == [
        "1", "10", "2", "u9"]


def test_partition_folders_supply_columns_as_text(tmp_path: Path) -> None:
    folder = tmp_path / "parts"
    for user in ("007", "42"):
        write_parquet(pd.DataFrame({"i": [1, 2]}), folder / f"user={user}" / "day=2005-09-06" / "p.parquet")
    out = scan_table(folder, threshold=None, user_col="user", item_col="i", timestamp_col="day")
    assert out.user_ids.tolist() == ["007", "42"]  # "007" is not a canonical integer: kept
    assert out.timestamp.tolist() == [1125964800] * 4


def test_spark_column_types(tmp_path: Path) -> None:
    from decimal import Decimal

    table = pa.table({
        "u": pa.array([3, 3, 4], pa.int32()),
        "i": pa.array(["a", "b", "a"]).dictionary_encode(),
        "r": pa.array([Decimal("4.5"), Decimal("2.0"), Decimal("5.0")], pa.decimal128(3, 1)),
        "ts": pa.array([1125964800 * 10**9] * 3, pa.timestamp("ns", tz="UTC")),  # Spark's INT96
    })
    pq.write_table(table, tmp_path / "part-00000.parquet")
    out = scan_table(tmp_path, threshold=3.5, **OPTIONS)
    assert out.rows_read == 3 and len(out) == 2
    assert out.user_ids.tolist() == [3, 4] and out.item_ids.tolist() == ["a", "b"]
    assert out.timestamp.tolist() == [1125964800] * 2


def test_parts_in_natural_order(tmp_path: Path) -> None:
    for k in (10, 9, 1, 2):
        (tmp_path / f"part.{k}.parquet").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "part.0.parquet").write_bytes(b"")
    (tmp_path / "_temporary").mkdir()
    (tmp_path / "_temporary" / "part.99.parquet").write_bytes(b"")
    names = [p.path.relative_to(tmp_path).as_posix() for p in find_parts(tmp_path)]
    assert names == ["part.1.parquet", "part.2.parquet", "part.9.parquet", "part.10.parquet",
                     "sub/part.0.parquet"]


# ------------------------------------------------------------------ errors
def test_errors_name_the_part_and_the_column(log: pd.DataFrame, tmp_path: Path) -> None:
    def parts(name: str, frames: list[pd.DataFrame]) -> Path:
        folder = tmp_path / name
        for k, frame in enumerate(frames):
            write_parquet(frame, folder / f"part-{k:05d}.parquet")
        return folder

    def scan(folder: Path, **options) -> None:
        scan_table(folder, threshold=None, **{**OPTIONS, **options})

    a, b = log.iloc[:100], log.iloc[100:200]
    with raises(r"part-00001\.parquet: no column 'r'; columns found: \['u', 'i', 'ts', 'day'\]"):
        scan(parts("missing", [a, b.drop(columns="r")]))
    with raises(r"part-00001\.parquet, column 'u': type int64, but \S+part-00000\.parquet has "
                r"(large_)?string; every part must give a column the same type"):
        scan(parts("type", [a, b.assign(u=np.arange(len(b)))]))
    with raises(r"part-00000\.parquet, column 'i': type double; expected integer or text ids"):
        scan(parts("float_ids", [a.assign(i=a["i"] + 0.5)]))
    with raises(r"part-00001\.parquet, row 3, column 'r': missing value"):
        scan(parts("null", [a, b.assign(r=[None if k == 2 else 1.0 for k in range(len(b))])]))
    late = tmp_path / "late" / "part-00000.parquet"  # in the fourth of several row groups
    write_parquet(b.assign(r=[None if k == 75 else 1.0 for k in range(len(b))]), late, 20)
    assert pq.ParquetFile(late).num_row_groups == 5
    with raises(r"part-00000\.parquet, row 76, column 'r': missing value"):
        scan(late.parent)
    with raises(r"part-00000\.parquet, row 2, column 'r': expected a finite number"):
        scan(parts("inf", [a.assign(r=[1.0, np.inf] + [1.0] * (len(a) - 2))]))
    with raises(r"part-00000\.parquet, row 5, column 'u': empty id"):
        scan(parts("empty_id", [a.assign(u=["x"] * 4 + [""] + ["x"] * (len(a) - 5))]))
    with raises(r"part-00001\.parquet, row 3, column 'u': NUL byte in the id 'x\\x00'"):
        scan(parts("nul_id", [a, b.assign(u=["x"] * 2 + ["x\x00"] + ["x"] * (len(b) - 3))]))

    folder = parts("stray", [a, b])
    (folder / "notes.md").write_text("hello")
    with raises(r"notes\.md: not a part file \(suffix \.md\)"):
        scan(folder)
    (folder / "notes.md").unlink()
    (folder / "part-00002.parquet").write_bytes(b"PAR1 not really")
    with raises(r"part-00002\.parquet: not a readable Parquet file"):
        scan(folder)
    (folder / "part-00002.parquet").unlink()
    b.to_csv(folder / "part-00002.csv", index=False)
    with raises(r"parts of two formats, e\.g\. part-00000\.parquet \(parquet\) and \S+part-00002\.csv"):
        scan(folder)

    empty = tmp_path / "empty"
    empty.mkdir()
    with raises(r"empty: no part files; expected Parquet"):
        scan(empty)
    spark_markers(empty)
    with raises(r"empty: no part files"):
        scan(empty)
    with raises(r"empty_parts: the 2 part file\(s\) are empty \(no interactions\)"):
        scan(parts("empty_parts", [a.iloc[:0], a.iloc[:0]]))
    delta = parts("delta", [a])
    (delta / "_delta_log").mkdir()
    with raises(r"a Delta Lake table"):
        scan(delta)
    with raises(r"nowhere: no such file or folder"):
        scan(tmp_path / "nowhere")
    with raises(r"one column is named for two roles"):
        scan(folder, item_col="u")


def test_cli_ingests_a_folder(log: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = hive_parts(log, tmp_path / "parts")
    single = write_parquet(log.drop(columns="day"), tmp_path / "single.parquet")
    digests = []
    for k, path in enumerate((folder, single)):
        out = tmp_path / f"ds{k}"
        code = main(["ingest", "--source", "table", "--path", str(path), "--out", str(out),
                     "--option", "user_col=u", "--option", "item_col=i", "--threshold", "none",
                     "--n-heldout-users", "30"])
        assert code == 0
        digests.append(Dataset.load(out).digest())
    assert digests[0] == digests[1]
    shutil.rmtree(folder / "day=2020-01-01", ignore_errors=True)
    (folder / "day=2099-01-01").mkdir()
    (folder / "day=2099-01-01" / "part-00000.json").write_text("{}")
    code = main(["ingest", "--source", "table", "--path", str(folder), "--out", str(tmp_path / "ds2"),
                 "--option", "user_col=u", "--option", "item_col=i"])
    assert code == 2
    err = capsys.readouterr().err
    assert re.search(r"part-00000\.json: not a part file", err) and "Traceback" not in err
