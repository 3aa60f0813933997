"""``kill -9`` during ``recvae run`` / ``recvae train``, then ``--resume``: the same MLflow runs
continue, one per model, with the whole curve (no epoch missing or twice), ``best_epoch`` and
their artifacts; nothing is left RUNNING (issue 11's acceptance)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from recvae import cli
from recvae.config import load_config
from recvae.data.ingest import ingest
from tests.reliability.tracking.runs import REPO, pipeline_file, store_view

pytestmark = pytest.mark.slow
EPOCHS = 5


def run_until(argv: list[str], line: str, cwd: Path) -> str:
    """Run ``recvae argv`` and SIGKILL it as soon as it prints ``line``; returns its output."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "recvae.cli", *argv], cwd=cwd, env={**env, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert proc.stdout is not None
    seen = []
    for text in proc.stdout:
        seen.append(text)
        if line in text:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)[-3000:]
    return "".join(seen)


def check_resumed(run: dict, before: dict) -> None:
    """One run that continued the killed one: the same id, the whole curve once, FINISHED."""
    assert run["id"] == before["id"]
    assert run["status"] == "FINISHED"
    assert [s for s, _ in run["metrics"]["train/loss"]] == list(range(1, EPOCHS + 1))
    assert [s for s, _ in run["metrics"]["val_curve/ndcg_at_100"]] == list(range(1, EPOCHS + 1))
    assert [s for s, _ in run["metrics"]["val/ndcg_at_100"]] == [0]  # the final value: one bar
    assert "best_epoch" in run["metrics"]
    assert {"metrics.json", "epochs.csv", "learning_curves.png", "config.yaml"} <= set(run["artifacts"])
    assert run["models"] == ["READY"]
    assert "ended without closing the run" in run["tags"]["recvae.killed_reason"]
    assert run["tags"]["recvae.resumes"] == "1"


def test_kill_9_during_run_then_resume(
    tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yaml_path = pipeline_file(tmp_path, epochs=EPOCHS)
    argv = ["run", str(yaml_path), "--quiet", "--set", f"tracking.uri={store}"]
    run_until(argv, "[mult-vae] epoch   3", tmp_path)
    before = store_view(store)
    assert {r["status"] for r in before.values()} == {"RUNNING"}
    assert set(before) == {"quickstart", "mult-vae"}

    assert cli.main([*argv, "--resume"]) == 0
    out = capsys.readouterr().out  # the dead runs are closed, then reopened: say so at once
    assert "run mult-vae" in out and "marked KILLED (this --resume reopens it)" in out
    after = store_view(store)
    assert set(after) == {"quickstart", "mult-vae", "popularity"}  # one run per model, no more
    assert not [name for name, r in after.items() if r["status"] != "FINISHED"]
    check_resumed(after["mult-vae"], before["mult-vae"])
    assert after["quickstart"]["id"] == before["quickstart"]["id"]
    assert after["mult-vae"]["parent"] == after["popularity"]["parent"] == after["quickstart"]["id"]


def test_kill_9_during_train_then_resume(tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = load_config(pipeline_file(tmp_path)).data
    ingest(data)
    argv = ["train", "--data", str(data.out_dir), "--model", "mult-dae", "--epochs", str(EPOCHS),
            "--set", "batch_size=100", "--out", str(tmp_path / "model"), "--quiet",
            "--tracking-uri", store, "--device", "cpu"]
    run_until(argv, "[mult-dae] epoch   2", tmp_path)
    before = store_view(store)
    assert before["mult-dae"]["status"] == "RUNNING"

    assert cli.main([*argv, "--resume"]) == 0
    after = store_view(store)
    assert list(after) == ["mult-dae"]
    check_resumed(after["mult-dae"], before["mult-dae"])
    assert (tmp_path / "model" / "recvae_model.json").is_file()
    assert not (tmp_path / ".model.work").exists()  # everything logged: the work folder goes
