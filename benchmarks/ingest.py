"""Ingest speed and memory at ML-20M scale: read → preprocess → split → saved dataset.

Writes a synthetic ML-20M-shaped ``ratings.csv`` (~20M ratings, cached under --workdir), then
runs the paper's ML-20M ingestion (ratings > 3.5, users ≥ 5, 10,000 + 10,000 held-out users)
in a fresh subprocess so its peak memory is the ingest's alone. Target: < 30 s, < 4 GB.

    python benchmarks/ingest.py --json benchmarks/results/ingest.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import peak_rss_gb, print_table, write_json  # noqa: E402

CHILD = r"""
import json, sys, time, resource
t0 = time.perf_counter()
from recvae.data.spec import DataConfig, PreprocessConfig, SplitConfig
from recvae.data.ingest import ingest
data = DataConfig(source="movielens", path=sys.argv[1], out=sys.argv[2], name="ml-20m-synthetic",
                  preprocess=PreprocessConfig(threshold=3.5, min_item_users=0, min_user_items=5),
                  split=SplitConfig(method="strong", n_heldout_users=10_000))
ds, reused = ingest(data, force=True)
wall = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
print(json.dumps({"wall_seconds": wall, "peak_rss_gb": peak,
                  "timings": ds.manifest["timings"], "summary": ds.summary(),
                  "raw": ds.manifest["raw_interactions"], "positives": ds.manifest["positive_interactions"]}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="runs/bench", help="where the synthetic CSV and dataset go")
    p.add_argument("--ratings", type=int, default=20_000_263)
    p.add_argument("--json", help="write results to this JSON file")
    args = p.parse_args()

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    csv = work / f"ml20m_synthetic_{args.ratings}.csv"
    if not csv.exists():
        from recvae.data.synthetic import make_ml20m_like, write_ratings_csv

        t = time.perf_counter()
        write_ratings_csv(make_ml20m_like(n_ratings=args.ratings), csv)
        print(f"generated {csv} in {time.perf_counter() - t:.0f}s (generator peak {peak_rss_gb():.1f} GB)")
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(csv), str(work / "ml20m_synthetic_dataset")],
        check=True, capture_output=True, text=True,
    )
    res = json.loads(out.stdout.strip().splitlines()[-1])
    t = res["timings"]
    row = {
        "ratings": res["raw"], "positives": res["positives"],
        "users": res["summary"]["users"], "items": res["summary"]["items"],
        "read_s": t["read_seconds"], "preprocess_s": t["preprocess_seconds"],
        "split_s": t["split_seconds"], "seen_s": t.get("seen_seconds", 0.0),
        "total_wall_s": res["wall_seconds"],
        "peak_rss_gb": res["peak_rss_gb"],
    }
    print_table([row])
    ok = res["wall_seconds"] < 30 and res["peak_rss_gb"] < 4
    print(f"target < 30 s and < 4 GB: {'met' if ok else 'NOT met'}")
    write_json(args.json, {"benchmark": "ingest", "target": {"seconds": 30, "gb": 4}, "result": row,
                           "summary": res["summary"]})


if __name__ == "__main__":
    main()
