"""Searches across processes: `recvae run` killed with SIGKILL mid-trial resumes with --resume,
and two processes running the same pipeline model share one SQLite study."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import pytest

from recvae import cli
from recvae.config import load_config
from recvae.data.ingest import ingest
from recvae.search.study import open_storage

pytestmark = pytest.mark.slow

STUDY = "search-test:tiny:mult-dae"
BLOCK = {
    "model": "mult-dae",
    "params": {"epochs": 8, "batch_size": 50, "threads": 1},
    "search": {"dropout": {"low": 0.1, "high": 0.7}, "lr": {"low": 1.0e-3, "high": 1.0e-2, "log": True}},
    "pruner": "none",
}


def _recvae(*args: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "recvae.cli", *args], stdout=log.open("w"),
        stderr=subprocess.STDOUT, env=env,
    )


def _trials(url: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials; none while the process has not created it."""
    if not Path(url.removeprefix("sqlite:///")).exists():
        return []
    try:  # open_storage takes the lock the process creates its tables under
        return optuna.load_study(study_name=STUDY, storage=open_storage(url)).trials
    except KeyError:
        return []


def test_a_killed_search_resumes_and_finishes_its_trials(
    tmp_path: Path, write_pipeline: Callable[..., Path], capsys: pytest.CaptureFixture[str],
) -> None:
    block = {**BLOCK, "params": {**BLOCK["params"], "epochs": 5}, "trials": 3}
    path = write_pipeline([block])
    url = f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}"
    log = tmp_path / "killed.log"
    proc = _recvae("run", str(path), "--no-track", "--quiet", log=log)
    try:
        deadline = time.monotonic() + 600
        while not _trials(url):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        storage = open_storage(url)
        study_id = storage.get_study_id_from_name(STUDY)
        while True:  # kill -9 once a trial is complete and the next one is running
            assert proc.poll() is None, f"finished before it could be killed:\n{log.read_text()}"
            assert time.monotonic() < deadline, log.read_text()
            states = {t.state.name for t in storage.get_all_trials(study_id, deepcopy=False)}
            if {"COMPLETE", "RUNNING"} <= states:
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    killed = [t.number for t in _trials(url) if t.state.name == "RUNNING"]
    assert len(killed) == 1

    assert cli.main(["run", str(path), "--no-track", "--quiet", "--resume"]) == 0
    out = capsys.readouterr().out
    assert f"trial {killed[0]} was left RUNNING by a process that died: marked FAIL" in out
    trials = _trials(url)
    assert sum(t.state.name == "COMPLETE" for t in trials) == 3
    assert [t.number for t in trials if t.state.name == "FAIL"] == killed
    assert not any(t.state.name == "RUNNING" for t in trials)
    assert (tmp_path / "runs" / "models" / "mult-dae" / "weights.npz").is_file()


def test_two_processes_share_one_study(
    tmp_path: Path, write_pipeline: Callable[..., Path],
) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    path = write_pipeline([{**BLOCK, "trials": 3}], search={"storage": url})
    ingest(load_config(path).data)  # both processes reuse it
    procs, logs = [], []
    for name in ("a", "b"):  # two machines: their own output_dir, one storage
        logs.append(tmp_path / f"{name}.log")
        procs.append(_recvae("run", str(path), "--no-track", "--quiet", "--resume",
                             "--set", f"output_dir={tmp_path / name}", log=logs[-1]))
    try:
        for proc, log in zip(procs, logs, strict=True):
            assert proc.wait(timeout=600) == 0, log.read_text()
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    trials = _trials(url)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3, [t.state for t in trials]
    pids = {t.user_attrs["recvae.pid"] for t in trials}
    assert pids == {p.pid for p in procs}, "both processes ran trials"
    assert len({(t.params["dropout"], t.params["lr"]) for t in trials}) == 3  # no repeated draws
    best = optuna.load_study(study_name=STUDY, storage=open_storage(url)).best_trial.number
    texts = [log.read_text() for log in logs]
    for text in texts:
        assert f"best trial {best}: val NDCG@100" in text
    # the process that did not run the best trial trained it again: the same model
    assert sum("ran elsewhere: training it here" in text for text in texts) == 1
    a, b = (np.load(tmp_path / n / "models" / "mult-dae" / "weights.npz") for n in ("a", "b"))
    assert a.files == b.files and all(np.allclose(a[k], b[k], atol=1e-6) for k in a.files)
