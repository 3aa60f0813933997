"""A finished pipeline's numbers as a benchmark table: each model's test metrics, weights, and
wall time (its child run's), the pipeline's wall time and the ensemble's share of it.

    recvae run pipelines/gowalla.yaml
    python benchmarks/pipeline_summary.py runs/gowalla --tracking-uri sqlite:///mlflow.db \
        --command "recvae run pipelines/gowalla.yaml" --json benchmarks/results/gowalla_pipeline.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, write_json  # noqa: E402


def wall_seconds(client: MlflowClient, run_id: str | None) -> float | None:
    """Seconds from a run's start to its end (None without a run or an end)."""
    if not run_id:
        return None
    info = client.get_run(run_id).info
    return (info.end_time - info.start_time) / 1000 if info.end_time else None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("output_dir", type=Path, help="the pipeline's output_dir (holds results.json)")
    p.add_argument("--tracking-uri", required=True)
    p.add_argument("--command", default="", help="how the pipeline was run (recorded)")
    p.add_argument("--metrics", default="recall_full_at_20,ndcg_at_20,ndcg_at_100")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    results = json.loads((args.output_dir / "results.json").read_text())
    client = MlflowClient(args.tracking_uri)
    parents = {m["parent_run_id"] for m in results["models"] if m.get("parent_run_id")}
    pipeline_wall = sum(w for w in (wall_seconds(client, r) for r in parents) if w)
    names = [m for m in args.metrics.split(",") if m]
    models: list[dict[str, Any]] = []
    for m in results["models"]:
        row = {"model": m["run_name"], "ok": m["ok"], "wall_s": wall_seconds(client, m.get("run_id")),
               "val/ndcg_at_100": m["metrics"].get("val/ndcg_at_100")}
        row.update({f"test/{n}": m["metrics"].get(f"test/{n}") for n in names})
        models.append({**row, "weights": m.get("weights"), "selected_epoch": m.get("selected_epoch"),
                       "metrics": m["metrics"], "error": m.get("error")})
    ensemble = [m["wall_s"] for m in models if m["model"] == "ensemble" and m["wall_s"]]
    share = ensemble[0] / pipeline_wall if ensemble and pipeline_wall else None
    hidden = ("metrics", "weights", "error", "selected_epoch")
    print_table([{k: ("" if v is None else v) for k, v in m.items() if k not in hidden} for m in models])
    print(f"pipeline wall {pipeline_wall:.0f} s; the ensemble's share "
          + ("none" if share is None else f"{share:.1%}"))
    write_json(args.json, {"command": args.command, "pipeline_wall_s": pipeline_wall,
                           "ensemble_share_of_wall": share, "models": models})


if __name__ == "__main__":
    main()
