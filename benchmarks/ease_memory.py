"""EASE / EDLAE memory: the guard's estimate (``fit_memory_bytes``) against the measured peak.

For each catalogue size and dtype, a synthetic power-law log is written to a temporary ``.npz``
and fitted in a fresh subprocess, which reports its resident set just before the fit and its
peak (``getrusage``) after it; their difference is the fit's real peak. The guard refuses a fit
when the estimate exceeds the memory available, so the estimate must not be below the measured
peak, and should not be far above it.

    python benchmarks/ease_memory.py --json benchmarks/results/ease_memory.json
    python benchmarks/ease_memory.py --items 4000 --dtypes float64   # one size (used by a test)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).parent))
from _common import power_law_rows, print_table, write_json  # noqa: E402

# Everything the fit does not allocate (torch, the matrix) is in memory before the baseline;
# then the kernel's high-water mark is reset to the current RSS ("5" > clear_refs, Linux ≥ 4.0),
# so that VmHWM afterwards is the fit's own peak. (getrusage's ru_maxrss would also keep a peak
# carried over from any thread that exited before the reset.)
CHILD = r"""
import json, sys, time
import numpy as np, scipy.sparse as sp, torch
from recvae.models.ease import ease_weights
x = sp.load_npz(sys.argv[1]).tocsr()
dtype, dropout = np.dtype(sys.argv[2]), float(sys.argv[3])
def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before, peak_before = status("VmRSS"), status("VmHWM")
t = time.perf_counter()
b = ease_weights(x, 50.0, dtype, dropout=dropout)
seconds = time.perf_counter() - t
peak = status("VmHWM")
print(json.dumps({"rss_before": before, "peak_before": peak_before, "peak": peak,
                  "seconds": seconds, "finite": bool(np.isfinite(b).all())}))
"""


def measure(x: sp.csr_matrix, dtype: str, dropout: float, workdir: Path) -> dict:
    """Fit ``x`` in a fresh process; the estimate beside the measured peak, in bytes."""
    from recvae.models.ease import fit_memory_bytes

    path = workdir / f"x_{x.shape[1]}.npz"
    sp.save_npz(path, x, compressed=False)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), dtype, str(dropout)],
        check=True, capture_output=True, text=True,
    )
    child = json.loads(out.stdout.strip().splitlines()[-1])
    if child["peak_before"] > child["rss_before"] + 16 * 2**20:
        # the high-water mark was not reset: the fit's own peak would be understated
        raise RuntimeError(f"peak RSS not reset before the fit: {child}")
    measured = child["peak"] - child["rss_before"]
    estimate = fit_memory_bytes(x, np.dtype(dtype))
    return {
        "items": x.shape[1], "users": x.shape[0], "nnz": x.nnz, "dtype": dtype,
        "dropout": dropout, "dense_mb": x.shape[1] ** 2 * np.dtype(dtype).itemsize / 1e6,
        "estimate_mb": estimate / 1e6, "measured_mb": measured / 1e6,
        "estimate/measured": estimate / measured, "fit_s": child["seconds"],
        "finite": child["finite"],
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, nargs="+", default=[4000, 8000])
    p.add_argument("--dtypes", nargs="+", default=["float64", "float32"])
    p.add_argument("--users-per-item", type=float, default=5.0, help="n_users = this × n_items")
    p.add_argument("--items-per-user", type=float, default=40.0, help="mean row length")
    p.add_argument("--dropout", type=float, default=0.25, help="EDLAE's p (0 = EASE)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write results to this JSON file")
    args = p.parse_args(argv)

    from recvae.models.memory import available_bytes, format_bytes

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n_items in args.items:
            n_users = int(args.users_per_item * n_items)
            x = power_law_rows(
                n_users, n_items, int(args.items_per_user * n_users), np.random.default_rng(args.seed)
            )
            for dtype in args.dtypes:
                rows.append(measure(x, dtype, args.dropout, Path(tmp)))
    print_table(rows)
    worst = min(r["estimate/measured"] for r in rows)
    print(f"estimate ≥ measured peak everywhere: {'yes' if worst >= 1 else 'NO'} (min ratio {worst:.3f})")
    available = available_bytes()
    print(f"memory available now: {format_bytes(available) if available else 'unknown'}")
    write_json(args.json, {"benchmark": "ease_memory", "rows": rows, "available_bytes": available})


if __name__ == "__main__":
    main()
