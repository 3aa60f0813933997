"""Quality of the sampled softmax against the full one at equal epochs, on a real log.

Trains the Mult-VAE of a pipeline (default: ``pipelines/gowalla.yaml``'s, I-200-I with β → 0.5)
once per softmax setting, for the same number of epochs and without early stopping, selects the
epoch of best validation NDCG@100 as the loop does, and reports validation and test NDCG@20 /
Recall@20 (``recall_full_at_20``, Gowalla's published definition) of the selected weights, the
gap to the full softmax and the seconds per epoch. There is no refit on training + validation
(the pipeline's ``refit: true``): both settings are compared on the same footing.

    python benchmarks/sampled_softmax.py --epochs 40 --json benchmarks/results/sampled_softmax_gowalla.json
    python benchmarks/sampled_softmax.py --settings full,sampled:2048,sampled:4096:0.75 --epochs 5

Each setting is ``full`` or ``sampled:S[:α]`` (S negatives, popularity exponent α). Results are
written after every setting, so a long run can be read while it goes on; run again with the same
``--json``, the settings it already holds are kept and not trained again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from recvae.config import load_config
from recvae.data.ingest import ingest
from recvae.evaluation import evaluate
from recvae.models import model_class

sys.path.insert(0, str(Path(__file__).parent))
from _common import peak_rss_gb, print_table, write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GOWALLA = Path("/work/shared/data/gowalla")


def parse_setting(text: str) -> dict[str, Any]:
    """``full`` or ``sampled:S[:alpha]`` → model parameters."""
    kind, *rest = text.split(":")
    if kind == "full" and not rest:
        return {"softmax": "full"}
    if kind == "sampled" and 1 <= len(rest) <= 2:
        params: dict[str, Any] = {"softmax": "sampled", "negatives": int(rest[0])}
        if len(rest) == 2:
            params["negatives_alpha"] = float(rest[1])
        return params
    raise SystemExit(f"--settings: {text!r} is not full or sampled:S[:alpha]")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=REPO / "pipelines" / "gowalla.yaml")
    p.add_argument("--data-path", type=Path, default=GOWALLA, help="the raw data (data.path)")
    p.add_argument("--model", default="mult-vae", help="the pipeline's model to train")
    p.add_argument("--settings", default="full,sampled:4096,sampled:2048")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--json", type=Path)
    p.add_argument("--include", type=Path, action="append", default=[],
                   help="results JSON of another run of this script (same model settings): its "
                        "settings are taken as done (e.g. two settings trained side by side)")
    args = p.parse_args(argv)

    cfg = load_config(args.config, {"data.path": str(args.data_path)})
    (mc,) = [m for m in cfg.models if m.run_name == args.model]
    dataset, _ = ingest(cfg.data)
    base = {**mc.params, "epochs": args.epochs, "patience": None}
    results: dict[str, Any] = {
        "benchmark": "sampled_softmax", "config": str(args.config), "model": mc.model,
        "params": base, "epochs": args.epochs, "runs": [],
        "selection": "best validation NDCG@100 over the epochs; no refit",
    }
    # continue a run, or gather runs made side by side: settings already done are kept
    for path in [*([args.json] if args.json and args.json.is_file() else []), *args.include]:
        done = json.loads(path.read_text())
        if done.get("params") != base:
            raise SystemExit(f"{path}: trained with other model settings than {args.config}'s")
        results["runs"] += [r for r in done["runs"]
                            if all(r["setting"] != o["setting"] for o in results["runs"])]
    for text in args.settings.split(","):
        if any(r["setting"] == text for r in results["runs"]):
            continue
        params = {**base, **parse_setting(text)}
        model = model_class(mc.model)(**params)
        t0 = time.perf_counter()
        model.fit(dataset, callbacks=[lambda r, s=text: print(
            f"[{s}] epoch {r.epoch:3d} loss {r.metrics['train/loss']:.3f} "
            f"val NDCG@20 {r.metrics.get('val/ndcg_at_20', float('nan')):.4f} "
            f"{r.metrics['epoch_seconds']:.1f}s", flush=True)])
        fit_s = time.perf_counter() - t0
        test = evaluate(model.score, dataset.test, ks=(20,), batch_size=1000, inplace=True)
        best = model.history_[model.best_epoch_ - 1]
        results["runs"].append({
            "setting": text,
            **{k: v for k, v in params.items() if k in ("softmax", "negatives", "negatives_alpha")},
            "best_epoch": model.best_epoch_,
            "val_ndcg_at_20": best["val/ndcg_at_20"],
            "val_ndcg_at_100": best["val/ndcg_at_100"],
            "val_recall_full_at_20": best["val/recall_full_at_20"],
            "test_ndcg_at_20": test.means["ndcg_at_20"],
            "test_recall_full_at_20": test.means["recall_full_at_20"],
            "test_ndcg_at_20_stderr": test.stderr["ndcg_at_20"],
            "epoch_seconds": min(h["epoch_seconds"] for h in model.history_),
            "fit_seconds": fit_s,
            "val_ndcg_at_20_per_epoch": [h["val/ndcg_at_20"] for h in model.history_],
            "train_loss_per_epoch": [h["train/loss"] for h in model.history_],
        })
        results["peak_rss_gb"] = peak_rss_gb()
        report(results, args.json)
    report(results, args.json)


def report(results: dict[str, Any], path: Path | None) -> None:
    """Gaps to the full softmax, the table, the JSON."""
    full = next((r for r in results["runs"] if r["setting"] == "full"), None)
    for r in results["runs"]:
        if full is not None:
            r["test_ndcg_at_20_gap_pct"] = 100 * (r["test_ndcg_at_20"] / full["test_ndcg_at_20"] - 1)
            r["val_ndcg_at_20_gap_pct"] = 100 * (r["val_ndcg_at_20"] / full["val_ndcg_at_20"] - 1)
    print_table([
        {k: r.get(k, "") for k in (
            "setting", "best_epoch", "val_ndcg_at_20", "test_ndcg_at_20", "test_recall_full_at_20",
            "test_ndcg_at_20_gap_pct", "epoch_seconds")}
        for r in results["runs"]
    ])
    write_json(str(path) if path else None, results)


if __name__ == "__main__":
    main()
