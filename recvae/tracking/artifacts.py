"""Top-k files as artifacts: the whole file, or a head sample when it is large."""

from __future__ import annotations

from pathlib import Path


def write_head_sample(src: Path, dst: Path, n_rows: int) -> Path:
    """The first ``n_rows`` rows of a Parquet or CSV (optionally .gz) top-k file, same format."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    batches, got = [], 0
    if src.name.lower().endswith((".parquet", ".pq")):
        reader = pq.ParquetFile(src).iter_batches(batch_size=min(n_rows, 65536))
    else:
        reader = pacsv.open_csv(pa.input_stream(str(src), compression="detect"))
    for batch in reader:
        batches.append(batch.slice(0, n_rows - got))
        got += batches[-1].num_rows
        if got >= n_rows:
            break
    table = pa.Table.from_batches(batches)
    if dst.name.lower().endswith((".parquet", ".pq")):
        pq.write_table(table, dst)
    elif dst.name.lower().endswith(".gz"):
        with pa.CompressedOutputStream(str(dst), "gzip") as out:
            pacsv.write_csv(table, out)
    else:
        pacsv.write_csv(table, dst)
    return dst

def sample_name(path: Path) -> str:
    name = path.name
    for suffix in (".csv.gz", ".parquet", ".pq", ".csv"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] + ".sample" + name[-len(suffix) :]
    return name + ".sample"
