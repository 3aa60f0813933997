"""Partitioned ingest at scale: a 50M-row log as Spark writes it, peak memory against the CSR.

Writes a synthetic interaction log as 32 Spark-style Parquet parts (``part-NNNNN-….snappy.parquet``,
``_SUCCESS``, ``.crc`` files; generated a part at a time, cached under --workdir), then ingests it
in a fresh subprocess per run, so each peak RSS is that ingest's alone:

- ``implicit``: every row a positive (threshold none), strong split with 10,000 + 10,000
  held-out users, on the first quarter, half and all of the parts. A line through the three
  (peak = slope × CSR + constant) gives the ratio and the constant. Target: slope ≤ 2.
- ``ratings`` (value > 3.5, about half the rows) and ``temporal`` (timestamps read, last
  interaction of each user held out) on all parts.
- ``single file``: the same rows as one Parquet file; its dataset digest must equal the folder's.

The CSR size is what the dataset holds: nnz × (4 + 4) + indptr over its float32 matrices (train,
fold-in and holdout parts), plus the seen pairs (every pair of the log over the dataset's items,
read in a second pass): nnz × (4 + 1) + indptr, as written to disk. (In memory the seen matrix
keeps the 8 bytes a pair of the keys it was sorted in; the peak counts them.)

    python benchmarks/ingest_partitioned.py --json benchmarks/results/ingest_partitioned.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, write_json  # noqa: E402

CHILD = r"""
import json, resource, sys, time
def rss_gb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1024**3
from recvae.data.ingest import ingest
from recvae.data.spec import DataConfig, PreprocessConfig, SplitConfig
base = rss_gb()
spec = json.loads(sys.argv[1])
t0 = time.perf_counter()
data = DataConfig(source="table", path=spec["path"], out=spec["out"], options=spec["options"],
                  preprocess=PreprocessConfig(threshold=spec["threshold"], min_item_users=0,
                                              min_user_items=5),
                  split=SplitConfig(**spec["split"]))
ds, _ = ingest(data, force=True)
wall = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
mats = [ds.train, ds.validation.fold_in, ds.validation.holdout, ds.test.fold_in, ds.test.holdout]
def gb(m):
    return (m.nnz * (m.indices.itemsize + m.data.itemsize) + m.indptr.nbytes) / 1024**3
print(json.dumps({
    "wall_seconds": wall, "peak_rss_gb": peak, "base_rss_gb": base,
    "csr_gb": sum(gb(m) for m in mats) + gb(ds.seen), "seen_gb": gb(ds.seen),
    "nnz": sum(m.nnz for m in mats), "seen_nnz": ds.seen.nnz, "raw": ds.manifest["raw_interactions"],
    "positives": ds.manifest["positive_interactions"], "timings": ds.manifest["timings"],
    "digest": ds.digest(),
}))
"""

STRONG = {"method": "strong", "n_heldout_users": 10_000}
IDS = {"user_col": "user_id", "item_col": "item_id"}


def run_child(spec: dict) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(spec)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def subset(parts: Path, k: int, folder: Path) -> Path:
    """A folder of links to the first ``k`` parts (whole users each: parts hold user blocks)."""
    if not folder.exists():
        folder.mkdir(parents=True)
        for f in sorted(parts.glob("part-*.parquet"))[:k]:
            (folder / f.name).symlink_to(f.resolve())
    return folder


def single_file(parts: Path, path: Path) -> Path:
    """The parts' rows, in order, as one Parquet file (streamed a row group at a time)."""
    import pyarrow.parquet as pq

    if not path.exists():
        files = sorted(parts.glob("part-*.parquet"))
        with pq.ParquetWriter(path, pq.read_schema(files[0])) as writer:
            for f in files:
                pf = pq.ParquetFile(f)
                for g in range(pf.num_row_groups):
                    writer.write_table(pf.read_row_group(g))
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="runs/bench/partitioned", help="where the log and datasets go")
    p.add_argument("--rows", type=int, default=50_000_000)
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--items", type=int, default=200_000)
    p.add_argument("--parts", type=int, default=32)
    p.add_argument("--skip", nargs="*", default=[], choices=["ratings", "temporal", "single"],
                   help="runs to leave out")
    p.add_argument("--json", help="write results to this JSON file")
    args = p.parse_args()

    work = Path(args.workdir)
    parts = work / f"log_{args.rows}"
    if not (parts / "_SUCCESS").exists():
        from recvae.data.synthetic import write_log_parts

        t = time.perf_counter()
        n = write_log_parts(parts, args.rows, n_users=args.users, n_items=args.items,
                            n_parts=args.parts)
        print(f"generated {n:,} rows in {parts} in {time.perf_counter() - t:.0f}s")

    runs = []
    for frac in (0.25, 0.5, 1.0):
        k = max(1, round(args.parts * frac))
        path = parts if k == args.parts else subset(parts, k, work / f"parts_{k}")
        runs.append(("implicit", path, {"threshold": None, "options": IDS, "split": STRONG}))
    if "ratings" not in args.skip:
        runs.append(("ratings", parts, {"threshold": 3.5, "split": STRONG,
                                        "options": {**IDS, "value_col": "rating"}}))
    if "temporal" not in args.skip:
        runs.append(("temporal", parts, {"threshold": None, "options": {**IDS, "timestamp_col": "ts"},
                                         "split": {"method": "temporal", "leave_last": 1}}))
    if "single" not in args.skip:
        runs.append(("single file", single_file(parts, work / f"log_{args.rows}.parquet"),
                     {"threshold": None, "options": IDS, "split": STRONG}))

    rows, results = [], []
    for k, (name, path, spec) in enumerate(runs):
        res = run_child({**spec, "path": str(path), "out": str(work / f"dataset_{k}")})
        results.append({"run": name, "path": str(path), **spec, **res})
        t = res["timings"]
        rows.append({
            "run": name, "rows": res["raw"], "positives": res["positives"], "nnz": res["nnz"],
            "csr_gb": res["csr_gb"], "seen_gb": res["seen_gb"], "peak_gb": res["peak_rss_gb"],
            "peak/csr": res["peak_rss_gb"] / res["csr_gb"],
            "(peak-base)/csr": (res["peak_rss_gb"] - res["base_rss_gb"]) / res["csr_gb"],
            "wall_s": res["wall_seconds"], "read_s": t["read_seconds"],
            "prep_s": t["preprocess_seconds"], "split_s": t["split_seconds"],
            "seen_s": t["seen_seconds"], "save_s": t["save_seconds"], "digest": res["digest"][:12],
        })
        print_table(rows[-1:])
    print()
    print_table(rows)

    implicit = [r for r in results if r["run"] == "implicit"]
    slope, constant = np.polyfit([r["csr_gb"] for r in implicit], [r["peak_rss_gb"] for r in implicit], 1)
    base = float(np.mean([r["base_rss_gb"] for r in results]))
    print(f"\npeak ≈ {slope:.2f} × CSR + {constant:.3f} GB over the implicit runs "
          f"(interpreter and libraries alone: {base:.3f} GB); target slope ≤ 2: "
          f"{'met' if slope <= 2 else 'NOT met'}")
    full = implicit[-1]
    margin = full["peak_rss_gb"] - 2 * full["csr_gb"]
    print(f"full log: peak {full['peak_rss_gb']:.3f} GB = 2 × CSR ({full['csr_gb']:.3f} GB) + "
          f"{margin:.3f} GB")
    single = [r for r in results if r["run"] == "single file"]
    same = None
    if single:
        same = single[0]["digest"] == full["digest"]
        print(f"folder of parts and single file give the same dataset: {same} "
              f"(sha256 {full['digest'][:16]}…)")
    write_json(args.json, {
        "benchmark": "ingest_partitioned",
        "target": "peak RSS ≤ 2 × CSR + a constant (slope ≤ 2)",
        "fit": {"slope": slope, "constant_gb": constant, "base_rss_gb": base,
                "full_log_peak_minus_2csr_gb": margin},
        "same_dataset_as_single_file": same,
        "table": rows,
        "runs": results,
    })


if __name__ == "__main__":
    main()
