"""The team setup of the README on a real database: one ``mlflow server`` whose backend store is
PostgreSQL, and one Optuna study in another PostgreSQL database, shared by two ``recvae run``
workers started together with ``--resume`` (each with its own output folder, as on two
machines). The ``postgres`` fixture (tests/conftest.py) starts a private PostgreSQL server; where
it cannot, the test fails under CI and is skipped elsewhere."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from recvae.config import load_config
from recvae.data.ingest import ingest
from recvae.search.study import ATTR_PID, ATTR_RUN_ID, open_storage
from tests.postgres import PostgresServer, PostgresUnavailable, start_or_give_up
from tests.reliability.tracking.mlflow_server import MlflowServer

TRIALS = 8
STUDY = "search-test:tiny:ease"
# EASE on 300 items: a trial is a 300 × 300 solve, so the workers' trials interleave
EASE = {"model": "ease", "search": {"l2": {"low": 1.0, "high": 1000.0, "log": True}},
        "trials": TRIALS, "sampler": "tpe"}


@pytest.mark.slow
def test_two_workers_share_one_study_and_one_tracking_server_on_postgresql(
    postgres: PostgresServer, tmp_path: Path, write_pipeline: Callable[..., Path],
) -> None:
    server = MlflowServer(postgres.url("mlflow"), tmp_path / "mlflow").start()
    try:
        server.wait()
        storage = postgres.url("optuna")
        path = write_pipeline([EASE], search={"storage": storage},
                              tracking={"uri": server.url, "log_model": False})
        ingest(load_config(path).data)  # the workers reuse it
        workers, logs = [], []
        for name in ("a", "b"):  # two machines: their own output_dir; one study, one server
            logs.append(tmp_path / f"{name}.log")
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "recvae.cli", "run", str(path), "--resume", "--quiet",
                 "--set", f"output_dir={tmp_path / name}"],
                stdout=logs[-1].open("w"), stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            ))
        try:
            for worker, log in zip(workers, logs, strict=True):
                assert worker.wait(timeout=600) == 0, log.read_text()[-3000:]
        finally:
            for worker in workers:
                worker.kill()
                worker.wait()
        texts = [log.read_text() for log in logs]

        # the study: `trials` trials in all, each number and each drawn l2 once
        trials = optuna.load_study(study_name=STUDY, storage=open_storage(storage)).trials
        assert [t.state.name for t in trials] == ["COMPLETE"] * TRIALS, [t.state for t in trials]
        assert sorted(t.number for t in trials) == list(range(TRIALS))
        assert len({t.params["l2"] for t in trials}) == TRIALS, [t.params for t in trials]
        ran = {t.user_attrs[ATTR_PID] for t in trials}
        assert ran <= {w.pid for w in workers}

        # the tracking server: each worker's pipeline run, its model run, and one nested run
        # per trial, in the worker that ran it
        client = MlflowClient(server.url)
        exp = client.get_experiment_by_name("tiny (strong)")
        runs = client.search_runs([exp.experiment_id], max_results=1000)
        by_id = {r.info.run_id: r for r in runs}
        pipelines = [r for r in runs if r.data.tags.get("recvae.run_type") == "pipeline"]
        models = [r for r in runs if r.data.tags.get("recvae.run_type") == "model"]
        shown = sorted((r.info.run_name, r.data.tags.get("recvae.run_type"), r.info.status) for r in runs)
        assert len(pipelines) == len(models) == 2, (shown, texts)
        for trial in trials:
            run = by_id[trial.user_attrs[ATTR_RUN_ID]]
            assert run.data.tags["recvae.trial_number"] == str(trial.number)
            assert run.data.tags["recvae.trial_state"] == "COMPLETE"
            assert run.info.status == "FINISHED"
            assert run.data.tags["mlflow.parentRunId"] in {m.info.run_id for m in models}
            assert float(run.data.params["model.l2"]) == pytest.approx(trial.params["l2"])
        trial_runs = [r for r in runs if r.data.tags.get("recvae.run_type") == "trial"]
        assert len(trial_runs) == TRIALS  # no trial logged twice
        for run in pipelines:
            assert run.info.status == "FINISHED"
            assert "comparison.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
        best = optuna.load_study(study_name=STUDY, storage=open_storage(storage)).best_trial.number
        for text in texts:
            assert f"best trial {best}: val NDCG@100" in text
            assert "recvae: warning: MLflow tracking" not in text
    finally:
        server.stop()


@pytest.mark.parametrize("ci", ["true", None])
def test_where_postgresql_cannot_start_ci_fails_and_elsewhere_it_skips(
    ci: str | None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_binaries() -> PostgresServer:
        raise PostgresUnavailable("no PostgreSQL binaries (initdb) in /usr/lib/postgresql/*/bin or on PATH")

    if ci is None:
        monkeypatch.delenv("CI", raising=False)
        with pytest.raises(pytest.skip.Exception, match="PostgreSQL cannot start here: no PostgreSQL"):
            start_or_give_up(no_binaries)
    else:
        monkeypatch.setenv("CI", ci)
        with pytest.raises(pytest.fail.Exception, match=r"PostgreSQL must run under CI .*: no PostgreSQL"):
            start_or_give_up(no_binaries)
