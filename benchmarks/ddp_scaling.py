"""Data-parallel scaling: the same epochs of Mult-VAE trained by 1 process × T threads and by
P processes × T/P threads (``recvae train --nproc``: torchrun, DDP over gloo on CPUs, NCCL on GPUs).

Data: the ML-20M training shape (20,108 items, ~68 interactions per user, power law) scaled in
users (``--scale``), with validation users; built once and saved. Every configuration trains the
same model with the same global batch (500) and seed, through the command line, in fresh
processes; the table reports seconds per epoch (the fastest epoch, validation excluded), the
speed-up over the first configuration and the final validation NDCG@100 (the runs differ only
by their dropout draws, so NDCG should agree to about the seed-to-seed spread).

    python benchmarks/ddp_scaling.py --scale 0.1 --json benchmarks/results/ddp_scaling.json
    python benchmarks/ddp_scaling.py --device cuda --configs 1x1,2x1,4x1 --scale 1   # GPUs
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, synthetic_dataset, write_json  # noqa: E402
from train_speed import ML20M_HELDOUT, ML20M_ITEMS, ML20M_TRAIN_NNZ, ML20M_TRAIN_USERS  # noqa: E402


def run(data: Path, out: Path, nproc: int, threads: int, args: argparse.Namespace) -> dict[str, Any]:
    """One configuration through ``recvae train`` (``--nproc`` execs torchrun)."""
    cmd = [sys.executable, "-m", "recvae", "train", "--data", str(data), "--model", args.model,
           "--epochs", str(args.epochs), "--out", str(out), "--no-track", "--quiet",
           "--device", args.device, "--set", f"threads={threads}",
           "--set", f"batch_size={args.batch_size}"]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"{nproc}x{threads} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    history = json.loads((out / "training.json").read_text())["history"]
    return {
        "processes": nproc,
        "threads_per_process": threads,
        "epoch_seconds": [h["epoch_seconds"] for h in history],
        "epoch_seconds_min": min(h["epoch_seconds"] for h in history),
        "val_seconds": [h.get("val_seconds") for h in history],
        "val_ndcg_at_100": history[-1].get("val/ndcg_at_100"),
        "train_loss": [h["train/loss"] for h in history],
        "wall_seconds": wall,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=0.1, help="fraction of ML-20M's users")
    p.add_argument("--configs", default="1x2,2x1", help="PROCESSESxTHREADS, comma-separated")
    p.add_argument("--model", default="mult-vae")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=500, help="the global batch")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    configs = [tuple(int(v) for v in c.split("x")) for c in args.configs.split(",") if c]
    results: dict[str, Any] = {
        "benchmark": "ddp_scaling", "scale": args.scale, "model": args.model,
        "epochs": args.epochs, "batch_size": args.batch_size, "device": args.device, "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="recvae-ddp-") as tmp:
        data = Path(tmp) / "data"
        n_train = max(1, int(ML20M_TRAIN_USERS * args.scale))
        synthetic_dataset(
            n_train, max(1, int(ML20M_HELDOUT * args.scale)), ML20M_ITEMS,
            ML20M_TRAIN_NNZ / ML20M_TRAIN_USERS, 0, f"synthetic ML-20M shape, scale {args.scale}",
        ).save(data)
        results["train_users"] = n_train
        for i, (nproc, threads) in enumerate(configs):
            row = run(data, Path(tmp) / f"model{i}", nproc, threads, args)
            results["runs"].append(row)
            print(f"{nproc} process(es) × {threads} thread(s): {row['epoch_seconds_min']:.1f} s/epoch",
                  flush=True)
    base = results["runs"][0]["epoch_seconds_min"]
    for row in results["runs"]:
        row["speedup"] = base / row["epoch_seconds_min"]
    print_table([{
        "processes × threads": f"{r['processes']} × {r['threads_per_process']}",
        "epoch s": r["epoch_seconds_min"], "speed-up": r["speedup"],
        "val NDCG@100": r["val_ndcg_at_100"], "wall s": r["wall_seconds"],
    } for r in results["runs"]])
    write_json(str(args.json) if args.json else None, results)


if __name__ == "__main__":
    main()
