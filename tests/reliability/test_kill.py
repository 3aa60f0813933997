"""``kill -9`` during ingest, train and recommend, then a rerun in the same place.

Each command runs in a subprocess that stops itself just before it renames its finished
temporary output into place (``stop_before_rename.py``), so the kill lands when the largest
leftover exists. The rerun must complete and leave no ``.NAME.tmp-*`` entry behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from recvae.data.dataset import Dataset
from recvae.models import load_model
from tests.reliability.conftest import REPO, TINY_VAE, cli, temporaries

HARNESS = Path(__file__).with_name("stop_before_rename.py")


def run_until_stopped(
    log: Path, pattern: str, nth: int, *args: object, timeout: float = 300
) -> subprocess.Popen:
    """Start ``recvae ARGS`` (output to ``log``) and wait until it has stopped itself before its
    ``nth`` rename onto a file named ``pattern``."""
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, str(HARNESS), pattern, str(nth), *map(str, args)],
            cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status = os.waitpid(proc.pid, os.WNOHANG | os.WUNTRACED)
        if pid == proc.pid and os.WIFSTOPPED(status):
            return proc
        if pid == proc.pid:  # it ended without stopping: show why
            pytest.fail(f"the command ended before the rename it should stop at:\n{log.read_text()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"the command did not reach the rename onto {pattern} in {timeout} s")


def kill_9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_kill_during_ingest_then_rerun(built: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "data" / "ds"
    args = ["ingest", "--source", "movielens", "--path", built["ratings"], "--out", out,
            "--n-heldout-users", "10"]
    kill_9(run_until_stopped(tmp_path / "killed.log", "ds", 1, *args))
    left = temporaries(tmp_path)
    assert [p.name.startswith(".ds.tmp-") for p in left] == [True]
    assert (left[0] / "manifest.json").is_file()  # the whole dataset, under its temporary name
    assert not out.exists()

    assert cli(*args) == 0
    assert temporaries(tmp_path) == []
    assert Dataset.load(out, verify=True).n_users > 0


@pytest.mark.slow
def test_kill_during_train_then_resume(built: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "models" / "vae"
    args = ["train", "--data", built["dataset"], "--model", "mult-vae", "--out", out,
            "--no-track", "--quiet", *TINY_VAE]
    # stop before the second epoch's checkpoint replaces the first's
    kill_9(run_until_stopped(tmp_path / "killed.log", "checkpoint.pt", 2, *args))
    left = temporaries(tmp_path)
    assert len(left) == 1 and left[0].name.startswith(".checkpoint.pt.tmp-"), left
    assert not out.exists()

    assert cli(*args, "--resume") == 0
    assert temporaries(tmp_path) == []
    assert sorted(p.name for p in out.parent.iterdir()) == ["vae"]  # the work folder is gone
    model = load_model(out)
    assert [h["epoch"] for h in model.history_] == [1.0, 2.0]


@pytest.mark.slow
def test_kill_during_recommend_then_rerun(built: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "recs" / "top.parquet"
    args = ["recommend", built["ease"], "--data", built["dataset"], "--out", out, "--k", "5",
            "--quiet"]
    kill_9(run_until_stopped(tmp_path / "killed.log", "top.parquet", 1, *args))
    left = temporaries(tmp_path)
    assert len(left) == 1 and left[0].name.startswith(".top.parquet.tmp-"), left
    assert left[0].stat().st_size > 0
    assert not out.exists()

    assert cli(*args) == 0
    assert temporaries(tmp_path) == []
    recs = pd.read_parquet(out)
    assert len(recs) == 5 * recs["user_id"].nunique() > 0
