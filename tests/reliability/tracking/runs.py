"""What the reliability tests compare: a small pipeline file, and a store's runs as plain data."""

from __future__ import annotations

from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[3]
TIMING = ("fit_seconds", "epoch_seconds", "val_seconds", "time/")  # differ between equal runs
# params and tags that name the run's own folders or store
LOCAL = ("output_dir", "tracking.uri", "recvae.topk_path", "mlflow.", "recvae.run_uid",
         "recvae.killed_reason", "recvae.resumes", "recvae.git_commit")


def pipeline_file(
    tmp: Path, *, epochs: int = 6, models: tuple[str, ...] = ("mult-vae", "popularity"),
    data: Path | None = None,
) -> Path:
    """The quickstart pipeline (bundled ml-latest-small) cut to ``models``, the autoencoders
    trained ``epochs`` epochs, written to ``tmp/pipeline.yaml``; the dataset goes to ``data``."""
    cfg = yaml.safe_load((REPO / "pipelines" / "quickstart.yaml").read_text())
    cfg["models"] = [m for m in cfg["models"] if m["model"] in models]
    for m in cfg["models"]:
        if "epochs" in m.get("params", {}):
            m["params"]["epochs"] = epochs
    cfg["data"]["path"] = str(REPO / "data" / "ml-latest-small.zip")
    cfg["data"]["out"] = str(data or tmp / "data")
    cfg["output_dir"] = str(tmp / "runs")
    cfg["device"] = "cpu"
    cfg["recommend"]["k"] = 10
    path = tmp / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def store_view(uri: str) -> dict[str, dict]:
    """Every run of the store, keyed by run name (a pipeline run by its pipeline's name, without
    the start time its MLflow name shows; a name twice is an error): id, status, parent
    id, params, tags, metric histories ``[(step, value)]`` without timings, artifact paths
    (two levels) and the status of its logged models."""
    client = MlflowClient(uri)
    runs: dict[str, dict] = {}
    for exp in client.search_experiments():
        for r in client.search_runs([exp.experiment_id]):
            name = r.data.tags.get("recvae.pipeline", r.info.run_name)
            assert name not in runs, f"two runs named {name}"
            history = {
                k: sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, k))
                for k in r.data.metrics if not any(t in k for t in TIMING)
            }
            top = [a for a in client.list_artifacts(r.info.run_id)]
            nested = [a.path for d in top if d.is_dir for a in client.list_artifacts(r.info.run_id, d.path)]
            outputs = r.outputs.model_outputs if r.outputs else []
            runs[name] = {
                "id": r.info.run_id, "status": r.info.status, "params": r.data.params,
                "parent": r.data.tags.get("mlflow.parentRunId"), "metrics": history,
                "artifacts": sorted({a.path for a in top} | set(nested)), "tags": r.data.tags,
                "models": sorted(client.get_logged_model(o.model_id).status.value for o in outputs),
            }
    return runs


def comparable(run: dict) -> dict:
    """A run without what names its own folders, store or timings: two equal runs compare equal."""
    def keep(k: str) -> bool:
        return not any(k.startswith(p) for p in LOCAL)

    return {
        "status": run["status"], "nested": run["parent"] is not None, "metrics": run["metrics"],
        "params": {k: v for k, v in run["params"].items() if keep(k)},
        "tags": {k: v for k, v in run["tags"].items() if keep(k)},
        "artifacts": run["artifacts"], "models": run["models"],
    }
