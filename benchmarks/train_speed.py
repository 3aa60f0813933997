"""Seconds per training epoch of Mult-VAE, Mult-DAE and RecVAE against this machine's compute
floor.

The floor (DESIGN.md §3) of Mult-VAE / Mult-DAE is the decoder's dense work:
6·n_train_users·hidden·n_items flops per epoch (one GEMM forward, two backward) divided by the
float32 GEMM rate measured in the same run on decoder-shaped products (500×600 @ 600×n_items and
the layouts the backward uses, best of several repetitions, before and after training). The
ratio epoch_seconds / floor is printed for hidden = 600 (the issue's floor, the Mult-VAE
decoder) and for the model's own floor (600 for Mult-VAE, 200 for Mult-DAE, RecVAE's below),
with the peak resident memory of the training process.

RecVAE's own floor counts the GEMMs its epoch cannot avoid (U users, I items, latent L = 200,
hidden H = 600, 5 encoder layers; 3 encoder passes then 1 decoder pass):
- decoder, per encoder pass: forward + input gradient (the frozen decoder needs no weight
  gradient), 2·2·U·L·I; per decoder pass: forward + weight gradient (the frozen encoder needs no
  input gradient), 2·2·U·L·I;
- the dense encoder layers (4 H×H layers and the H×2L μ/log σ² layer, f = 2·U·(4H² + 2HL) per
  forward): forward + both backward products per encoder pass (3f), the old encoder's forward
  for the composite prior per encoder pass (f), the forward that draws z per decoder pass (f).
Each class of product is divided by the best rate measured for its own shape (batch 500) in the
same process, before and after training (``recvae_floor``); the sparse input layer
(2·nnz·H per product, under 1 % of the total) and memory-bound work (softmax, LayerNorm, Adam)
are not in the floor.

Each model trains in a fresh subprocess so its peak RSS is its own. Data: a synthetic
ML-20M-shaped matrix (116,677 training users × 20,108 items, ~8M interactions, power-law users
and items, plus 10,000 validation users) built directly as CSR, and ml-latest-small.

    python benchmarks/train_speed.py                       # 1 epoch at full scale + ml-latest-small
    python benchmarks/train_speed.py --models recvae --json benchmarks/results/train_speed_recvae.json
    python benchmarks/train_speed.py --scale 0.1 --epochs 2 --json speed.json
    python benchmarks/train_speed.py --data runs/data/ml-20m   # any `recvae ingest` directory
    python benchmarks/train_speed.py --compare-first-layer     # embedding_bag vs sparse.mm
    python benchmarks/train_speed.py --recvae-cpu-breakdown --models '' --small ''   # busy machine
    python benchmarks/train_speed.py --device cuda --precision bf16 --small ''   # a GPU; its own floor

On a GPU the floor uses the GPU's GEMM rate in the run's precision (fp32, tf32 or bf16),
measured in the same process, and ``gpu_peak_gb`` is the CUDA allocator's peak (RecVAE's own
per-class floor is measured on the CPU only).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recvae.data.dataset import Dataset

sys.path.insert(0, str(Path(__file__).parent))
from _common import power_law_rows, synthetic_dataset, write_json  # noqa: E402

ML20M_TRAIN_USERS, ML20M_ITEMS, ML20M_TRAIN_NNZ, ML20M_HELDOUT = 116_677, 20_108, 8_000_000, 10_000
REPO = Path(__file__).resolve().parents[1]
SMALL_ZIP = REPO / "data" / "ml-latest-small.zip"
HIDDEN = {"mult-vae": 600, "mult-dae": 200}  # input size of each decoder's output layer
RECVAE_SHAPE = {"hidden": 600, "layers": 5, "latent": 200, "encoder_passes": 3, "decoder_passes": 1}


# --------------------------------------------------------------------------- data


def ml20m_like(scale: float, seed: int = 0) -> Dataset:
    """ML-20M's training shape (scaled in users and interactions) with 80/20 validation users."""
    return synthetic_dataset(
        max(1, int(ML20M_TRAIN_USERS * scale)), max(1, int(ML20M_HELDOUT * scale)), ML20M_ITEMS,
        ML20M_TRAIN_NNZ / ML20M_TRAIN_USERS, seed, name=f"synthetic power-law, scale {scale}",
    )


def ml_latest_small(path: Path) -> Dataset:
    """ml-latest-small with the paper's preprocessing and a strong split of 50 + 50 users."""
    from recvae.data.preprocess import preprocess
    from recvae.data.sources import read_movielens
    from recvae.data.split import strong_generalization

    return strong_generalization(preprocess(read_movielens(path), threshold=3.5), 50)


# --------------------------------------------------------------------------- measurements


def gemm_rates(
    n_items: int, reps: int = 7, device: str = "cpu", precision: str = "fp32"
) -> dict[str, float]:
    """Best-of-``reps`` GFLOP/s of the decoder's products (batch 500, hidden 600) on ``device``,
    in ``precision`` (fp32; tf32: float32 tensors on CUDA tensor cores; bf16 tensors)."""
    from recvae.models.autoencoders.training import precision_scope

    dev = torch.device(device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    g = torch.Generator(device=dev).manual_seed(0)
    b, h = 500, 600

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, device=dev).to(dtype)

    a = rand(b, h)
    w_hi = rand(h, n_items)  # the 500×600 @ 600×I, contiguous
    w_ih = rand(n_items, h)  # the model's layout (one row per item)
    grad = rand(b, n_items)
    out = torch.empty(b, n_items, device=dev, dtype=dtype)
    cases = {
        "mm_500x600x20108": lambda: torch.mm(a, w_hi, out=out),
        "decoder_forward": lambda: torch.mm(a, w_ih.t(), out=out),
        "decoder_grad_input": lambda: torch.mm(grad, w_ih),
        "decoder_grad_weight": lambda: torch.mm(grad.t(), a),
    }
    flops = 2.0 * b * h * n_items
    rates = {}
    # tf32 is a matmul mode of float32 tensors; bf16 is the tensors' own dtype
    with precision_scope("tf32" if precision == "tf32" else "fp32", dev):
        for name, fn in cases.items():
            fn()
            inner = 20 if dev.type == "cuda" else 1  # GPU products take ~0.1 ms: time a run of them
            best = min(_timed(fn, dev, inner) for _ in range(reps)) / inner
            rates[name] = flops / best / 1e9
    return rates


def recvae_floor(
    n_users: int, n_items: int, reps: int = 7, clock: Any = time.perf_counter
) -> dict[str, Any]:
    """RecVAE's GEMM floor for one epoch (see the module docstring): flops and best measured
    rate per class of product (timed with ``clock``), and their sum of seconds."""
    h, layers, lat = RECVAE_SHAPE["hidden"], RECVAE_SHAPE["layers"], RECVAE_SHAPE["latent"]
    enc, dec = RECVAE_SHAPE["encoder_passes"], RECVAE_SHAPE["decoder_passes"]
    b = 500
    g = torch.Generator().manual_seed(0)
    z = torch.randn(b, lat, generator=g)
    w = torch.randn(n_items, lat, generator=g)  # the decoder's layout: one row per item
    grad = torch.randn(b, n_items, generator=g)
    x = torch.randn(b, h, generator=g)
    w_hh = torch.randn(h, h, generator=g)
    w_head = torch.randn(2 * lat, h, generator=g)
    g_head = torch.randn(b, 2 * lat, generator=g)
    products = {  # name: (product, flops of one call, calls per epoch per 500 users)
        "decoder_forward": (lambda: torch.mm(z, w.t()), 2 * b * lat * n_items, enc + dec),
        "decoder_grad_input": (lambda: torch.mm(grad, w), 2 * b * lat * n_items, enc),
        "decoder_grad_weight": (lambda: torch.mm(grad.t(), z), 2 * b * lat * n_items, dec),
        # each hidden layer: forward (encoder + old encoder per encoder pass, encoder per
        # decoder pass), grad input, grad weight; the μ/log σ² layer likewise
        "hidden_forward": (lambda: torch.mm(x, w_hh.t()), 2 * b * h * h,
                           (enc * 2 + dec) * (layers - 1)),
        "hidden_grad_input": (lambda: torch.mm(x, w_hh), 2 * b * h * h, enc * (layers - 1)),
        "hidden_grad_weight": (lambda: torch.mm(x.t(), x), 2 * b * h * h, enc * (layers - 1)),
        "head_forward": (lambda: torch.mm(x, w_head.t()), 2 * b * h * 2 * lat, enc * 2 + dec),
        "head_grad_input": (lambda: torch.mm(g_head, w_head), 2 * b * h * 2 * lat, enc),
        "head_grad_weight": (lambda: torch.mm(g_head.t(), x), 2 * b * h * 2 * lat, enc),
    }
    batches = n_users / b
    out: dict[str, Any] = {"classes": {}, "seconds": 0.0, "flops": 0.0}
    for name, (fn, flops, calls) in products.items():
        fn()
        best = min(_timed(fn, clock=clock) for _ in range(reps))
        total = flops * calls * batches
        out["classes"][name] = {"gflops_per_epoch": total / 1e9, "rate_gflops": flops / best / 1e9}
        out["seconds"] += total / (flops / best)
        out["flops"] += total
    return out


def _merge_floors(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Per class, the faster of two measurements of the same floor."""
    classes = {
        k: max(a["classes"][k], b["classes"][k], key=lambda c: c["rate_gflops"])
        for k in a["classes"]
    }
    seconds = sum(c["gflops_per_epoch"] / c["rate_gflops"] for c in classes.values())
    return {"classes": classes, "seconds": seconds, "flops": a["flops"]}


def _timed(
    fn: Any, device: torch.device = torch.device("cpu"), repeat: int = 1,
    clock: Any = time.perf_counter,
) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = clock()
    for _ in range(repeat):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return clock() - t


def recvae_cpu_breakdown(n_items: int = ML20M_ITEMS, reps: int = 3) -> dict[str, Any]:
    """RecVAE's steps on one thread, in thread CPU time, against its floor timed the same way.

    Other processes on a shared machine stretch wall-clock epochs and spare the best-of-N GEMM
    timings, which inflates epoch / floor; one thread's CPU time is far less sensitive to them.
    Milliseconds per batch of 500 ML-20M-shaped users for the encoder step and the decoder step
    (forward, backward and Adam, as ``RecVAEStep.run`` takes them), and per 500 users of an
    epoch (3 encoder steps + 1 decoder step) against ``recvae_floor`` for 500 users.
    """
    from recvae.models.autoencoders import RecVAE
    from recvae.models.autoencoders.nets import SparseRows
    from recvae.models.autoencoders.training import frozen, reuse_freed_memory

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    users = 3000
    rows = power_law_rows(users, n_items, int(users * ML20M_TRAIN_NNZ / ML20M_TRAIN_USERS), rng)
    model = RecVAE()
    step = model._build_step(model._new_net(n_items), users)
    net = step.net
    batches = [
        (SparseRows.from_csr(rows[i : i + 500]), torch.Generator().manual_seed(i))
        for i in range(0, users, 500)
    ]

    def encoder_step(x: SparseRows, g: torch.Generator) -> None:
        with frozen(net.net.decoder):
            nll, kl = net.encoder_terms(x, g)
            step.encoder_optimizer.zero_grad(set_to_none=True)
            (nll + (step.kl_weights(x) * kl).mean()).backward()
            step.encoder_optimizer.step()

    def decoder_step(x: SparseRows, g: torch.Generator) -> None:
        nll = net.decoder_nll(x, g)
        step.decoder_optimizer.zero_grad(set_to_none=True)
        nll.backward()
        step.decoder_optimizer.step()

    out: dict[str, Any] = {}
    with reuse_freed_memory():
        for name, fn in (("encoder_step_ms", encoder_step), ("decoder_step_ms", decoder_step)):
            fn(*batches[0])
            per_batch = []
            for _ in range(reps):
                t = time.thread_time()
                for b in batches[1:]:
                    fn(*b)
                per_batch.append((time.thread_time() - t) / (len(batches) - 1))
            out[name] = 1e3 * min(per_batch)
        floor = recvae_floor(500, n_items, clock=time.thread_time)
    torch.set_num_threads(before)
    epoch_ms = 3 * out["encoder_step_ms"] + out["decoder_step_ms"]
    out.update(
        epoch_ms_per_500_users=epoch_ms,
        floor_ms_per_500_users=1e3 * floor["seconds"],
        ratio_to_floor=epoch_ms / (1e3 * floor["seconds"]),
        floor=floor,
    )
    return out


def peak_rss_gb() -> float:
    """Peak resident memory of this process.

    Linux's VmHWM belongs to the current address space; ``ru_maxrss`` would also count the
    parent's memory at fork time (it survives exec), so it is only the fallback.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 30) if sys.platform == "darwin" else peak / (1 << 20)


def compare_first_layer(reps: int = 10) -> dict[str, float]:
    """Milliseconds per batch (forward + weight gradient) of the sparse first layer, two ways."""
    import torch.nn.functional as F

    from recvae.models.autoencoders.nets import SparseRows

    rng = np.random.default_rng(0)
    x = power_law_rows(500, ML20M_ITEMS, int(500 * ML20M_TRAIN_NNZ / ML20M_TRAIN_USERS), rng)
    rows = SparseRows.from_csr(x)
    w = torch.nn.Parameter(torch.randn(ML20M_ITEMS, 600) * 0.01)
    g = torch.randn(500, 600)
    csr = torch.sparse_csr_tensor(
        torch.from_numpy(x.indptr.astype(np.int64)), rows.cols, rows.values, size=x.shape
    )

    def bag() -> None:
        w.grad = None
        out = F.embedding_bag(
            rows.cols, w, rows.offsets, mode="sum", per_sample_weights=rows.values
        )
        out.backward(g)

    def spmm() -> None:
        w.grad = None
        torch.sparse.mm(csr, w).backward(g)

    out = {}
    for name, fn in (("embedding_bag_ms", bag), ("sparse_mm_ms", spmm)):
        fn()
        out[name] = 1e3 * min(_timed(fn) for _ in range(reps))
    return out


def run_model(
    model_name: str, data_dir: Path, epochs: int, device: str, threads: int | None,
    precision: str = "fp32",
) -> dict:
    """Train one model on a saved dataset (in this process) and measure it."""
    from recvae.models import model_class

    ds = Dataset.load(data_dir)
    n_users, n_items = ds.train.shape
    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
    gemm_device = "cuda" if device.startswith("cuda") or (
        device == "auto" and torch.cuda.is_available()) else "cpu"
    before = gemm_rates(n_items, device=gemm_device, precision=precision)
    own_before = (
        recvae_floor(n_users, n_items) if model_name == "recvae" and gemm_device == "cpu" else None
    )
    load_before = os.getloadavg()[0]
    reports: list[dict[str, float]] = []
    model = model_class(model_name)(
        epochs=epochs, device=device, threads=threads, precision=precision
    )
    model.fit(ds, callbacks=[lambda r: reports.append(r.metrics)])
    after = gemm_rates(n_items, device=gemm_device, precision=precision)
    rate = max(max(before.values()), max(after.values()))
    epoch_s = min(r["epoch_seconds"] for r in reports)
    flops_600 = 6.0 * n_users * 600 * n_items
    extra: dict[str, Any] = {}
    if own_before is not None:
        own = _merge_floors(own_before, recvae_floor(n_users, n_items))
        floor_own = own["seconds"]
        extra = {"recvae_floor": own, "recvae_shape": RECVAE_SHAPE}
    else:
        # RecVAE on a GPU has no per-class floor here: floor600 stands in for it
        floor_own = 6.0 * n_users * HIDDEN.get(model_name, 600) * n_items / (rate * 1e9)
    return {
        "model": model_name,
        "users": n_users,
        "items": n_items,
        "nnz": int(ds.train.nnz),
        "epochs": epochs,
        "epoch_seconds": epoch_s,
        "epoch_seconds_all": [r["epoch_seconds"] for r in reports],
        "val_seconds": min(r.get("val_seconds", 0.0) for r in reports),
        "val_ndcg_at_100": reports[-1].get("val/ndcg_at_100"),
        "gemm_gflops": rate,
        "gemm_gflops_before": before,
        "gemm_gflops_after": after,
        "floor600_seconds": flops_600 / (rate * 1e9),
        "ratio_to_floor600": epoch_s / (flops_600 / (rate * 1e9)),
        "floor_own_seconds": floor_own,
        "ratio_to_floor_own": epoch_s / floor_own,
        "peak_rss_gb": peak_rss_gb(),
        "loadavg_1min_before_after": [load_before, os.getloadavg()[0]],
        "threads": torch.get_num_threads(),
        "precision": precision,
        "val_ndcg_at_100_best": max((r.get("val/ndcg_at_100", 0.0) for r in reports), default=None),
        "val_ndcg_at_100_per_epoch": [r.get("val/ndcg_at_100") for r in reports],
        "fit_seconds_total": sum(r["epoch_seconds"] + r.get("val_seconds", 0.0) for r in reports),
        "gpu": torch.cuda.get_device_name(0) if gemm_device == "cuda" else None,
        "gpu_peak_gb": torch.cuda.max_memory_allocated() / 2**30 if gemm_device == "cuda" else None,
        "device": str(next(model.net_.parameters()).device),
        **extra,
    }


def in_subprocess(model_name: str, data_dir: Path, epochs: int, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        model_name,
        "--worker-data",
        str(data_dir),
        "--epochs",
        str(epochs),
        "--device",
        args.device,
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    cmd += ["--precision", args.precision]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{model_name} on {data_dir} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- main


def table(rows: list[dict]) -> str:
    head = (
        f"{'dataset':<18} {'model':<9} {'users×items (nnz)':<27} {'epoch s':>8} {'val s':>6} "
        f"{'GEMM GF/s':>9} {'floor600':>8} {'×floor600':>9} {'floor own':>9} {'×own':>6} "
        f"{'peak RSS':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        shape = f"{r['users']}×{r['items']} ({r['nnz'] / 1e6:.2f}M)"
        lines.append(
            f"{r['dataset']:<18} {r['model']:<9} {shape:<27} {r['epoch_seconds']:8.2f} "
            f"{r['val_seconds']:6.2f} {r['gemm_gflops']:9.1f} {r['floor600_seconds']:8.2f} "
            f"{r['ratio_to_floor600']:9.2f} {r['floor_own_seconds']:9.2f} "
            f"{r['ratio_to_floor_own']:6.2f} {r['peak_rss_gb']:6.2f}GB"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument(
        "--scale", type=float, default=1.0, help="fraction of ML-20M's users (1.0 = full)"
    )
    p.add_argument("--models", default="mult-vae,mult-dae,recvae")
    p.add_argument(
        "--data", type=Path, help="benchmark this dataset directory instead of synthetic"
    )
    p.add_argument("--small", type=Path, default=SMALL_ZIP, help="ml-latest-small zip ('' to skip)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int)
    p.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"],
                   help="training precision; the floor is measured in the same precision")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--compare-first-layer", action="store_true")
    p.add_argument(
        "--recvae-cpu-breakdown", action="store_true",
        help="RecVAE's steps vs its floor on one thread in CPU time (robust on a busy machine)",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-data", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        print(
            json.dumps(
                run_model(args.worker, args.worker_data, args.epochs, args.device, args.threads,
                          args.precision)
            )
        )
        return
    results: dict[str, Any] = {"benchmark": "train_speed", "runs": []}
    if args.recvae_cpu_breakdown:
        results["recvae_cpu_breakdown"] = b = recvae_cpu_breakdown()
        print(
            f"RecVAE, one thread, CPU ms per 500 users: encoder step {b['encoder_step_ms']:.0f}, "
            f"decoder step {b['decoder_step_ms']:.0f}, epoch {b['epoch_ms_per_500_users']:.0f} "
            f"= {b['ratio_to_floor']:.2f} × its floor ({b['floor_ms_per_500_users']:.0f})"
        )
    if args.compare_first_layer:
        results["first_layer"] = compare_first_layer()
        print(
            "first layer, ms per ML-20M-shaped batch (forward + weight grad):",
            results["first_layer"],
        )

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    with tempfile.TemporaryDirectory(prefix="recvae-speed-") as tmp:
        datasets: list[tuple[str, Path]] = []
        if not models:
            pass
        elif args.data:
            datasets.append((args.data.name, args.data))
        else:
            t = time.perf_counter()
            Dataset.save(ml20m_like(args.scale), Path(tmp) / "ml20m-like")
            elapsed = time.perf_counter() - t
            print(f"synthetic ML-20M-shaped data (scale {args.scale}) built in {elapsed:.1f}s")
            datasets.append((f"ml20m-like x{args.scale:g}", Path(tmp) / "ml20m-like"))
        if models and args.small and Path(args.small).is_file():
            ml_latest_small(args.small).save(Path(tmp) / "ml-latest-small")
            datasets.append(("ml-latest-small", Path(tmp) / "ml-latest-small"))
        for label, path in datasets:
            # Small data: several epochs, so that the minimum excludes one-time start-up costs.
            epochs = max(args.epochs, 5) if label == "ml-latest-small" else args.epochs
            for model in models:
                row = {"dataset": label, **in_subprocess(model, path, epochs, args)}
                results["runs"].append(row)
                print(table([row]).splitlines()[-1], flush=True)
    if not results["runs"]:
        write_json(str(args.json) if args.json else None, results)
        return
    print()
    print(table(results["runs"]))
    print(
        "floor600 = 6·users·600·items / GEMM rate (best decoder-shaped GEMM in the run's "
        "precision, measured before/after training in the same process); floor own: Mult-DAE's "
        "hidden 200, RecVAE's GEMMs per class at their own measured rates (module docstring); "
        "epoch s excludes validation (val s)."
    )
    write_json(str(args.json) if args.json else None, results)


if __name__ == "__main__":
    main()
