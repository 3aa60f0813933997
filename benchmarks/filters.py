"""Graph filters (GF-CF, BSPM, ChebyCF): speed and memory, search reuse, and the dense-P rule.

Three measurements, one per subcommand, each printing a table (``--json PATH`` writes it):

- ``timing``: one model on one dataset, as a pipeline runs it: fit (R̃ and the truncated SVD),
  then every validation and every test user scored and ranked (``evaluate``, all items). Wall
  and CPU seconds per stage and the process's peak RSS. Target for ChebyCF on Gowalla: ≤ 10 min
  on 2 cores, < 6 GB.
- ``reuse``: N trials of a search over the coefficient-only hyper-parameters (ChebyCF's φ and α,
  GF-CF's α, BSPM's T_s and β_idl), each a fresh model fitted and scored on validation, run
  twice in one process: with the caches cleared before every trial (N fresh fits), then as a
  search gets them (the SVD and the bases of the validation batches reused). Both passes must
  give the same validation metrics; their time ratio is the reuse's gain.
- ``calibrate``: P x through the dense n_items² P against R̃ᵀ(R̃ x) on synthetic catalogues,
  seconds per 1,000 users each: the measured ratio of multiply-add rates behind
  ``graph.DENSE_SPEEDUP`` and whether the rule picks the faster path.

    python benchmarks/filters.py timing --data /work/exp/data/gowalla --model chebycf \
        --json benchmarks/results/filters_timing_gowalla_chebycf.json
    python benchmarks/filters.py reuse --data /work/exp/data/gowalla --model chebycf --trials 3
    python benchmarks/filters.py reuse --data runs/data/ml-latest-small --set eta=256 --trials 30
    python benchmarks/filters.py calibrate --json benchmarks/results/filters_calibration.json

The machine is shared: wall seconds grow with other people's jobs, CPU seconds much less so;
both are reported.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from recvae.data.dataset import Dataset
from recvae.evaluation import evaluate
from recvae.models import create_model

sys.path.insert(0, str(Path(__file__).parent))
from _common import peak_rss_gb, power_law_rows, print_table, write_json  # noqa: E402

BATCH = 2000  # rows per score call, as reproduce.py and the pipeline evaluate
# The coefficient-only hyper-parameters of each filter and the ranges trials draw them from
# (the default search spaces' ranges, recvae/search/spaces.py).
COEFFICIENTS: dict[str, dict[str, tuple[float, float]]] = {
    "chebycf": {"phi": (0.5, 20.0), "alpha": (0.0, 0.5)},
    "gf-cf": {"alpha": (0.0, 1.0)},
    "bspm": {"sharpen_time": (0.5, 5.0), "idl_beta": (0.05, 1.0)},
}


class Clock:
    """Wall and CPU (this process, all threads) seconds of a stage."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def load(args: argparse.Namespace) -> Dataset:
    if args.data:
        return Dataset.load(args.data)
    from recvae.data.preprocess import preprocess
    from recvae.data.sources import read_movielens
    from recvae.data.split import strong_generalization

    df = preprocess(read_movielens(args.movielens), threshold=3.5, min_user_items=5)
    return strong_generalization(df, args.heldout)


def clear_caches() -> None:
    from recvae.models.filters.graph import SVD_CACHE
    from recvae.models.filters.models import BASIS_CACHE

    SVD_CACHE.clear()
    BASIS_CACHE.clear()


# ------------------------------------------------------------------------------- timing
def timing(args: argparse.Namespace) -> dict[str, Any]:
    ds = load(args)
    model = create_model(args.model, args.set)  # the authors' Gowalla settings unless --set
    rows, total_wall, total_cpu = [], 0.0, 0.0
    with Clock() as c:
        model.fit(ds)
    rows.append({"stage": "fit (R̃ and the SVD)", "users": "", "wall_s": c.wall, "cpu_s": c.cpu})
    metrics = {}
    for name in ("validation", "test"):
        part = ds.part(name)
        with Clock() as c:
            result = evaluate(model.score, part, ks=(20,), batch_size=BATCH, inplace=True)
        metrics[name] = {m: result.means[m] for m in ("recall_full_at_20", "ndcg_at_20")}
        rows.append({"stage": f"score + rank {name}", "users": result.n_users, "wall_s": c.wall,
                     "cpu_s": c.cpu})
    for r in rows:
        total_wall, total_cpu = total_wall + r["wall_s"], total_cpu + r["cpu_s"]
    rows.append({"stage": "total", "users": "", "wall_s": total_wall, "cpu_s": total_cpu})
    peak = peak_rss_gb()
    print(f"{args.model} {model.params()} on {args.data or args.movielens}")
    print_table(rows)
    print(f"peak RSS {peak:.2f} GB; validation {metrics['validation']}; test {metrics['test']}")
    if args.model == "chebycf":
        ok = total_wall <= 600 and peak < 6.0
        print(f"target ≤ 600 s wall and < 6 GB: {'met' if ok else 'NOT met'}")
    return {"model": args.model, "params": model.params(), "data": str(args.data or args.movielens),
            "summary": ds.summary(), "stages": rows, "peak_rss_gb": peak, "metrics": metrics}


# -------------------------------------------------------------------------------- reuse
def trial_values(model: str, n: int, seed: int = 0) -> list[dict[str, float]]:
    """``n`` settings of the model's coefficient-only hyper-parameters (log-uniform φ)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        values = {}
        for key, (lo, hi) in COEFFICIENTS[model].items():
            draw = np.exp(rng.uniform(np.log(lo), np.log(hi))) if key == "phi" else rng.uniform(lo, hi)
            values[key] = round(float(draw), 4)
        out.append(values)
    return out


def run_trials(
    ds: Dataset, model: str, fixed: dict[str, Any], trials: list[dict[str, float]], fresh: bool
) -> tuple[list[float], float, float]:
    """Fit and validate each trial; ``fresh`` clears the caches before each (N independent fits)."""
    metrics, clock = [], Clock()
    clear_caches()
    with clock:
        for values in trials:
            if fresh:
                clear_caches()
            m = create_model(model, {**fixed, **values}).fit(ds)
            result = evaluate(m.score, ds.validation, ks=(20,), batch_size=BATCH, inplace=True)
            metrics.append(result.means["ndcg_at_20"])
            del m
    return metrics, clock.wall, clock.cpu


def reuse(args: argparse.Namespace) -> dict[str, Any]:
    from recvae.models.filters.graph import SVD_CACHE
    from recvae.models.filters.models import BASIS_CACHE

    ds = load(args)
    trials = trial_values(args.model, args.trials)
    fresh_metrics, fresh_wall, fresh_cpu = run_trials(ds, args.model, args.set, trials, fresh=True)
    reuse_metrics, reuse_wall, reuse_cpu = run_trials(ds, args.model, args.set, trials, fresh=False)
    stats = {"svd_hits": SVD_CACHE.hits, "svd_misses": SVD_CACHE.misses,
             "basis_hits": BASIS_CACHE.hits, "basis_misses": BASIS_CACHE.misses,
             "basis_cache_gb": BASIS_CACHE.nbytes / 1e9}
    same = bool(np.array_equal(fresh_metrics, reuse_metrics))
    rows = [
        {"mode": f"{args.trials} fresh fits", "wall_s": fresh_wall, "cpu_s": fresh_cpu,
         "per_trial_s": fresh_wall / args.trials},
        {"mode": f"{args.trials} trials, reused", "wall_s": reuse_wall, "cpu_s": reuse_cpu,
         "per_trial_s": reuse_wall / args.trials},
    ]
    print(f"{args.model} on {args.data or args.movielens} ({ds.validation.n_users} validation users), "
          f"trials over {', '.join(COEFFICIENTS[args.model])}")
    print_table(rows)
    print(f"fresh/reused: wall {fresh_wall / reuse_wall:.2f}×, CPU {fresh_cpu / reuse_cpu:.2f}×; "
          f"same validation NDCG@20 in both passes: {same}; caches of the reused pass: {stats}")
    print(f"peak RSS {peak_rss_gb():.2f} GB")
    return {"model": args.model, "fixed": args.set, "data": str(args.data or args.movielens),
            "summary": ds.summary(), "trials": trials, "val_ndcg_at_20": reuse_metrics,
            "fresh_val_ndcg_at_20": fresh_metrics,
            "identical": same, "rows": rows, "ratio_wall": fresh_wall / reuse_wall,
            "ratio_cpu": fresh_cpu / reuse_cpu, "cache": stats, "peak_rss_gb": peak_rss_gb()}


# ---------------------------------------------------------------------------- calibrate
def calibrate(args: argparse.Namespace) -> dict[str, Any]:
    from recvae.models.filters.graph import DENSE_SPEEDUP, ItemGraph, dense_is_faster

    rng = np.random.default_rng(0)
    rows = []
    for n_users, n_items, per_user in args.shapes:
        x = power_law_rows(n_users, n_items, n_users * per_user, rng)
        graph = ItemGraph.of(x)
        signal = rng.random((n_items, args.users), dtype=np.float32)
        sparse = best_seconds(lambda g=graph, s=signal: g.propagate(s))
        graph.densify("dense", "calibrate")
        dense = best_seconds(lambda g=graph, s=signal: g.propagate(s))
        nnz = graph.normalized.nnz
        rows.append({
            "n_users": n_users, "n_items": n_items, "nnz": nnz,
            "sparse_s_per_1k": sparse * 1000 / args.users, "dense_s_per_1k": dense * 1000 / args.users,
            # multiply-adds per second: dense n_items² per user, sparse 2·nnz per user
            "rate_ratio": (n_items**2 / dense) / (2 * nnz / sparse),
            "faster": "dense" if dense < sparse else "sparse",
            "rule_picks": "dense" if dense_is_faster(graph.normalized) else "sparse",
        })
        del graph
    print(f"P x on {args.users} users, best of 3 (DENSE_SPEEDUP = {DENSE_SPEEDUP})")
    print_table(rows)
    return {"users": args.users, "dense_speedup": DENSE_SPEEDUP, "rows": rows}


def best_seconds(f: Any, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def setting(text: str) -> tuple[str, Any]:
    import yaml

    key, sep, value = text.partition("=")
    if not (key and sep):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def shape(text: str) -> tuple[int, int, int]:
    users, items, per_user = (int(v) for v in text.split("x"))
    return users, items, per_user


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("timing", "reuse"):
        s = sub.add_parser(name)
        src = s.add_mutually_exclusive_group(required=True)
        src.add_argument("--data", type=Path, help="a dataset directory written by `recvae ingest`")
        src.add_argument("--movielens", type=Path, help="a MovieLens archive, split in-process")
        s.add_argument("--heldout", type=int, default=100, help="validation/test users (--movielens)")
        s.add_argument("--model", default="chebycf", choices=sorted(COEFFICIENTS))
        s.add_argument("--set", type=setting, action="append", default=[], metavar="KEY=VALUE",
                       help="a fixed hyper-parameter, e.g. eta=256 (VALUE parsed as YAML)")
        s.add_argument("--json", type=Path)
    sub.choices["reuse"].add_argument("--trials", type=int, default=5)
    c = sub.add_parser("calibrate")
    c.add_argument("--users", type=int, default=256)
    c.add_argument("--shapes", type=shape, nargs="+", metavar="USERSxITEMSxPER_USER",
                   default=[(20000, 2000, 50), (20000, 5000, 50), (20000, 5000, 200),
                            (20000, 10000, 100), (20000, 10000, 400)])
    c.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.command != "calibrate":
        args.set = dict(args.set)
    result = {"timing": timing, "reuse": reuse, "calibrate": calibrate}[args.command](args)
    write_json(str(args.json) if args.json else None, {"command": args.command, **result})


if __name__ == "__main__":
    main()
