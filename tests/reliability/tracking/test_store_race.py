"""Concurrent ``recvae run`` on a fresh folder: MLflow's schema setup of a new SQLite store
raced (``table experiments already exists``, ``duplicate column name: step``); under the store
lock every run finishes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from recvae.config import load_config
from recvae.data.ingest import ingest
from tests.reliability.tracking.runs import REPO, pipeline_file

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("n", [2, 5])
def test_concurrent_runs_on_a_fresh_store_all_finish(n: int, tmp_path: Path, store_dir: Path) -> None:
    yaml_path = pipeline_file(tmp_path, models=("popularity",))
    cfg = yaml.safe_load(yaml_path.read_text())
    cfg["tracking"].pop("uri", None)  # the shipped file names a store; this test needs the default one
    yaml_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    ingest(load_config(yaml_path).data)  # the runs share the dataset, as they would
    fresh = store_dir / "fresh"  # no mlflow.db yet: each run's default store is <cwd>/mlflow.db
    fresh.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "recvae.cli", "run", str(yaml_path), "--quiet",
             "--set", f"output_dir={tmp_path / f'runs{i}'}", "--set", "tracking.log_model=false",
             "--set", "recommend.enabled=false"],
            cwd=fresh, env={**env, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )
        for i in range(n)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, output in zip(procs, outputs, strict=True):
        assert p.returncode == 0, output[-3000:]
    client = MlflowClient(f"sqlite:///{fresh / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ml-latest-small (strong)")
    runs = client.search_runs([exp.experiment_id])
    names = sorted(r.data.tags.get("recvae.pipeline", r.info.run_name) for r in runs)  # dated
    assert names == ["popularity"] * n + ["quickstart"] * n
    assert {r.info.status for r in runs} == {"FINISHED"}
