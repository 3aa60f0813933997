"""Wall time and peak memory of exporting top-100 recommendations for every user.

Data: a synthetic ML-20M-shaped history (136,677 users × 20,108 items, ~10M interactions,
Pareto user activity, Zipf item popularity) built directly as CSR. Model: a Mult-VAE
(I-600-200-600-I) with freshly initialised, untrained weights: scoring costs the same as for a
trained one. ``write_recommendations`` scores the users in batches, masks every known item, keeps
the top k and streams them to a Parquet file; the full score matrix is never held.

    python benchmarks/recommend.py                         # full scale, k = 100
    python benchmarks/recommend.py --scale 0.05 --json benchmarks/results/recommend.json
    python benchmarks/recommend.py --device cuda       # scoring on a GPU; masking, top-k, file on the host
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_rss_gb, power_law_rows, write_json  # noqa: E402

from recvae.data.dataset import Dataset, Part  # noqa: E402
from recvae.models.autoencoders import MultVAE  # noqa: E402
from recvae.recommend import write_recommendations  # noqa: E402

ML20M_USERS, ML20M_ITEMS, ML20M_NNZ = 136_677, 20_108, 10_000_000


def in_memory_dataset(history: sp.csr_matrix) -> Dataset:
    """Every user a training user; empty validation/test parts (only the history matters)."""
    n_users, n_items = history.shape
    empty = Part(
        fold_in=sp.csr_matrix((0, n_items), dtype=np.float32),
        holdout=sp.csr_matrix((0, n_items), dtype=np.float32),
        users=np.zeros(0, np.int64),
    )
    return Dataset(
        train=history,
        train_users=np.arange(n_users),
        validation=empty,
        test=empty,
        user_ids=np.arange(1, n_users + 1),
        item_ids=np.arange(1, n_items + 1),
        manifest={"name": "synthetic-ml20m", "protocol": "weak"},
        seen=history.astype(bool),  # the raw log's pairs: masked with the history (exclude all)
    )


def untrained_vae(item_ids: np.ndarray, device: str = "cpu") -> MultVAE:
    """A Mult-VAE with the paper's architecture, initialised for ``item_ids`` (no training)."""
    from recvae.models.autoencoders import resolve_device

    model = MultVAE(device=device, eval_batch_size=2000)
    model.net_ = model._new_net(len(item_ids)).to(resolve_device(device, strict=True))
    model.net_.eval()
    model.item_ids_ = item_ids
    return model


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of ML-20M's users / nnz")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=2000)
    ap.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    ap.add_argument("--device", default="cpu", help="where the model scores: cpu, cuda, auto")
    ap.add_argument("--json", help="write the results to this JSON file")
    args = ap.parse_args(argv)

    n_users, nnz = int(ML20M_USERS * args.scale), int(ML20M_NNZ * args.scale)
    t0 = time.perf_counter()
    history = power_law_rows(n_users, ML20M_ITEMS, nnz, np.random.default_rng(0))
    dataset = in_memory_dataset(history)
    model = untrained_vae(dataset.item_ids, args.device)
    setup_s = time.perf_counter() - t0
    rss_before = peak_rss_gb()
    print(
        f"data: {n_users:,} users × {ML20M_ITEMS:,} items, {history.nnz:,} interactions "
        f"(built in {setup_s:.1f} s); torch threads: {torch.get_num_threads()}"
    )

    score_seconds = 0.0
    score = model.score

    def timed_score(fold_in: sp.csr_matrix) -> np.ndarray:
        nonlocal score_seconds
        start = time.perf_counter()
        out = score(fold_in)
        score_seconds += time.perf_counter() - start
        return out

    model.score = timed_score  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"topk.{args.format}"
        start = time.perf_counter()
        write_recommendations(model, dataset, out, k=args.k, batch_size=args.batch_size)
        wall = time.perf_counter() - start
        size_mb = out.stat().st_size / 2**20
        n_rows = _count_rows(out, args.format)
    peak = peak_rss_gb()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    result = {
        "users": n_users,
        "items": ML20M_ITEMS,
        "interactions": int(history.nnz),
        "k": args.k,
        "batch_size": args.batch_size,
        "format": args.format,
        "rows_written": n_rows,
        "file_mb": round(size_mb, 1),
        "wall_seconds": round(wall, 2),
        "score_seconds": round(score_seconds, 2),
        "mask_topk_write_seconds": round(wall - score_seconds, 2),
        "peak_rss_gb": round(peak, 3),
        "peak_rss_gb_before_export": round(rss_before, 3),
        "cpu_seconds": round(ru.ru_utime + ru.ru_stime, 1),
        "model": "mult-vae 600-200-600, untrained weights",
        "device": str(next(model.net_.parameters()).device),
    }
    print(
        f"top-{args.k} for {n_users:,} users → {n_rows:,} rows, {size_mb:.0f} MB {args.format}: "
        f"{wall:.1f} s wall (scoring {score_seconds:.1f} s, mask+top-k+write "
        f"{wall - score_seconds:.1f} s); peak RSS {peak:.2f} GB "
        f"({rss_before:.2f} GB before the export)"
    )
    write_json(args.json, {"benchmark": "recommend", **result})


def _count_rows(path: Path, fmt: str) -> int:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    with open(path, "rb") as f:
        return sum(1 for _ in f) - 1


if __name__ == "__main__":
    main()
