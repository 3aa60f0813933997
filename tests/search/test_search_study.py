"""recvae.search.study: dead trials, counts, the storage URL's password kept out of messages."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from recvae.errors import RecvaeError
from recvae.search.study import (
    ATTR_ERROR,
    ATTR_HOST,
    ATTR_PID,
    count_trials,
    fail_dead_trials,
    masked,
    open_storage,
)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_trials_of_dead_processes_fail_and_do_not_count(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    host = socket.gethostname()
    owners = {
        "dead here": (_dead_pid(), host),
        "alive here": (os.getppid(), host),
        "elsewhere": (_dead_pid(), "another-host"),  # left to the heartbeat's grace period
    }
    running = {}
    for name, (pid, where) in owners.items():
        trial = study.ask()
        trial.set_user_attr(ATTR_PID, pid)
        trial.set_user_attr(ATTR_HOST, where)
        running[name] = trial.number
    done = study.ask()
    study.tell(done, 0.5)
    failing = study.ask()
    failing.set_user_attr(ATTR_ERROR, "diverged")
    study.tell(failing, state=optuna.trial.TrialState.FAIL)

    failed = fail_dead_trials(study, storage)
    assert [t.number for t in failed] == [running["dead here"]]
    c = count_trials(study)
    assert (c.complete, c.failed, c.lost, c.running) == (1, 1, 1, 2)
    assert c.done == 2  # the completed one and the one that failed by its own fault


def test_a_trial_killed_before_it_named_its_owner_fails_once_it_is_old(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process killed between ask() and mark_owner leaves a RUNNING trial with neither owner
    nor heartbeat: young, it is left alone (its process may be about to mark it); old, it fails."""
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    orphan = study.ask()
    owned = study.ask()
    owned.set_user_attr(ATTR_PID, os.getppid())
    owned.set_user_attr(ATTR_HOST, socket.gethostname())
    assert fail_dead_trials(study, storage) == []
    monkeypatch.setattr("recvae.search.study.ORPHAN_SECONDS", -1.0)
    assert [t.number for t in fail_dead_trials(study, storage)] == [orphan.number]
    assert count_trials(study).running == 1


def test_a_storage_url_never_shows_its_password() -> None:
    assert masked("postgresql://ann:s3cret@db:5432/optuna") == "postgresql://ann:***@db:5432/optuna"
    with pytest.raises(RecvaeError) as e:
        open_storage("postgresql://ann:s3cret@127.0.0.1:1/optuna")
    assert "s3cret" not in str(e.value) and "ann:***@127.0.0.1" in str(e.value)
