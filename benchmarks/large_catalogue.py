"""A catalogue of a million items: seconds per epoch and peak memory with ``softmax: sampled``,
and what ``softmax: full`` would cost.

Data: a synthetic strong-generalization log with power-law popularity (Zipf items, Pareto users,
``_common.power_law_rows``), 10^6 items and 2·10^7 training interactions by default, built in
its own process and saved, so that each training process (a fresh subprocess per setting)
measures only its own peak resident memory.

Before a setting is trained, its memory is estimated from the parameter counts (weights, the
best epoch's copy of them, Adam's two moments, dense gradients where the setting has them, the
B × n_items logits of the full softmax, the data); a setting whose estimate exceeds ``--max-gb``
is reported with its estimate and not run, so the benchmark never thrashes a shared machine.

    python benchmarks/large_catalogue.py --users 20000 --epochs 1            # a first, small run
    python benchmarks/large_catalogue.py --json benchmarks/results/large_catalogue.json
    python benchmarks/large_catalogue.py --items 100000 --interactions 2000000 --max-gb 8

Generating 2·10^7 interactions takes minutes to tens of minutes; ``--data DIR`` reuses a dataset
saved by an earlier run's generator, which ``--keep-data DIR`` keeps::

    python benchmarks/large_catalogue.py --epochs 0 --keep-data runs/data/catalogue  # generate
    python benchmarks/large_catalogue.py --data runs/data/catalogue --softmax sampled
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, synthetic_dataset, write_json  # noqa: E402

GB = 1e9


def model_params(model: str, n_items: int, hidden: list[int], latent: int) -> dict[str, int]:
    """Parameter counts: the item-indexed matrices (input layer, output layer) and the rest."""
    if model == "mult-vae":
        enc = [*hidden, 2 * latent]
        dec = [latent, *reversed(hidden)]
    else:
        enc, dec = list(hidden), list(reversed(hidden))
    item = n_items * enc[0] + n_items * dec[-1] + n_items
    dense = enc[0] + sum(a * b + b for a, b in zip(enc[:-1], enc[1:], strict=True))
    dense += sum(a * b + b for a, b in zip(dec[:-1], dec[1:], strict=True))
    return {"item": item, "other": dense, "output_in": dec[-1]}


def memory_estimate(softmax: str, params: dict[str, int], n_items: int, batch: int,
                    batch_items: float, negatives: int, nnz: int) -> dict[str, float]:
    """Bytes by kind for one training process (float32; CSR as int32 indices + float32 values)."""
    p = params["item"] + params["other"]
    # the loop keeps a copy of the best epoch's weights for model selection
    out = {"weights": 4 * p, "best_weights": 4 * p, "adam_moments": 8 * p, "data": 8 * nnz}
    if softmax == "full":
        out["gradients"] = 4 * p  # dense, every item row
        out["logits"] = 4 * batch * n_items  # B × I, softmax in place
    else:
        cand = batch_items + negatives
        out["gradients"] = 4 * (cand * params["output_in"] + params["other"])  # touched rows
        out["logits"] = 4 * batch * cand * 2  # B × (items + S) and the gathered weights
    out["total"] = sum(out.values()) + 0.6 * GB  # interpreter, torch, scipy, pandas (measured)
    return out


def batch_items(train: Any, batch: int, rng: np.random.Generator, samples: int = 20) -> float:
    """Mean number of distinct items in a batch of ``batch`` random users."""
    n = train.shape[0]
    return float(np.mean([
        len(np.unique(train[rng.choice(n, min(batch, n), replace=False)].indices))
        for _ in range(samples)
    ]))


def worker(data: Path, model: str, params: dict[str, Any], epochs: int) -> dict[str, Any]:
    """Train in this (fresh) process; seconds per epoch, validation seconds, peak RSS."""
    from train_speed import peak_rss_gb

    from recvae.data.dataset import Dataset
    from recvae.models import model_class

    ds = Dataset.load(data)
    reports: list[dict[str, float]] = []
    m = model_class(model)(epochs=epochs, device="cpu", **params)
    t = time.perf_counter()
    m.fit(ds, callbacks=[lambda r: reports.append(r.metrics)])
    return {
        "epoch_seconds": [r["epoch_seconds"] for r in reports],
        "val_seconds": [r.get("val_seconds") for r in reports],
        "val_ndcg_at_100": [r.get("val/ndcg_at_100") for r in reports],
        "fit_seconds": time.perf_counter() - t,
        "peak_rss_gb": peak_rss_gb(),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--interactions", type=int, default=20_000_000, help="training interactions")
    p.add_argument("--users", type=int, default=200_000, help="training users")
    p.add_argument("--heldout", type=int, default=1000, help="validation (and test) users")
    p.add_argument("--model", default="mult-dae")
    p.add_argument("--hidden", default="200", help="hidden_dims, comma-separated ('' for none)")
    p.add_argument("--latent", type=int, default=200, help="mult-vae's latent_dim")
    p.add_argument("--softmax", default="sampled,full")
    p.add_argument("--negatives", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-gb", type=float, default=8.0, help="skip settings estimated above this")
    p.add_argument("--threads", type=int)
    p.add_argument("--json", type=Path)
    p.add_argument("--data", type=Path, help="a dataset saved by an earlier run (--keep-data)")
    p.add_argument("--keep-data", type=Path, help="save the generated dataset here")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--worker-params", help=argparse.SUPPRESS)
    p.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.generate:  # in its own process: the generator's memory is not the trainer's
        synthetic_dataset(args.users, args.heldout, args.items, args.interactions / args.users,
                          0, "synthetic power-law catalogue").save(args.generate)
        return
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, json.loads(args.worker_params),
                                args.epochs)))
        return

    hidden = [int(h) for h in args.hidden.split(",") if h.strip()]
    rng = np.random.default_rng(0)
    results: dict[str, Any] = {
        "benchmark": "large_catalogue", "items": args.items, "users": args.users,
        "model": args.model, "hidden_dims": hidden, "batch_size": args.batch_size,
        "negatives": args.negatives, "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="recvae-catalogue-") as tmp:
        data = args.data or args.keep_data or Path(tmp) / "data"
        t = time.perf_counter()
        if args.data is None:
            gen = subprocess.run(
                [sys.executable, __file__, "--generate", str(data), "--users", str(args.users),
                 "--heldout", str(args.heldout), "--items", str(args.items),
                 "--interactions", str(args.interactions)],
                capture_output=True, text=True,
            )
            if gen.returncode:
                raise SystemExit(f"data generation failed:\n{gen.stderr[-3000:]}")
        from recvae.data.dataset import Dataset

        train = Dataset.load(data).train
        results["nnz"] = int(train.nnz)
        results["generate_seconds"] = None if args.data else time.perf_counter() - t
        results["users"], results["items"] = train.shape
        if args.epochs < 1:
            print(f"{train.shape[0]:,} users × {train.shape[1]:,} items, {train.nnz:,} "
                  f"interactions saved to {data}")
            return
        per_batch = batch_items(train, args.batch_size, rng)
        results["batch_items_mean"] = per_batch
        made = f"generated in {results['generate_seconds']:.0f}s" if args.data is None else data
        print(f"{train.shape[0]:,} users × {train.shape[1]:,} items, {train.nnz:,} interactions "
              f"({made}); {per_batch:,.0f} distinct items per batch of {args.batch_size}",
              flush=True)
        del train
        counts = model_params(args.model, results["items"], hidden, args.latent)
        rows = []
        for softmax in [s for s in args.softmax.split(",") if s]:
            est = memory_estimate(softmax, counts, results["items"], args.batch_size, per_batch,
                                  args.negatives, results["nnz"])
            params = {"hidden_dims": hidden, "batch_size": args.batch_size, "softmax": softmax,
                      "negatives": args.negatives, "patience": None, "threads": args.threads,
                      "eval_batch_size": 1000}
            if args.model == "mult-vae":
                params["latent_dim"] = args.latent
            run: dict[str, Any] = {"softmax": softmax, "estimate_gb": {k: v / GB for k, v in est.items()}}
            if est["total"] > args.max_gb * GB:
                run["skipped"] = f"estimated {est['total'] / GB:.1f} GB > --max-gb {args.max_gb}"
                print(f"{softmax}: {run['skipped']}", flush=True)
            else:
                proc = subprocess.run(
                    [sys.executable, __file__, "--worker", str(data), "--worker-params",
                     json.dumps(params), "--model", args.model, "--epochs", str(args.epochs)],
                    capture_output=True, text=True,
                )
                if proc.returncode:
                    raise SystemExit(f"{softmax} failed:\n{proc.stderr[-3000:]}")
                run.update(json.loads(proc.stdout.strip().splitlines()[-1]))
            results["runs"].append(run)
            rows.append({
                "softmax": softmax,
                "epoch s": min(run["epoch_seconds"]) if "epoch_seconds" in run else "-",
                "val s": run["val_seconds"][-1] if run.get("val_seconds") else "-",
                "peak RSS GB": run.get("peak_rss_gb", "-"),
                "estimate GB": est["total"] / GB,
                "status": run.get("skipped", "ran"),
            })
            write_json(str(args.json) if args.json else None, results)
    print()
    print_table(rows)
    write_json(str(args.json) if args.json else None, results)


if __name__ == "__main__":
    main()
