"""Data-parallel training from the command line and the pipeline: ``torchrun -m recvae train``,
``recvae train --nproc``, a pipeline model with ``nproc``, and the helpers of
``recvae.distributed`` outside a process group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from recvae import distributed
from recvae.cli import main
from recvae.config import load_config
from recvae.errors import RecvaeError
from recvae.models.autoencoders import MultDAE
from recvae.run import fit
from recvae.run.context import Layout, RunContext
from recvae.run.pipeline import run_pipeline

REPO = Path(__file__).resolve().parents[1]
ZIP = REPO / "data" / "ml-latest-small.zip"
# Mult-DAE without dropout draws no training noise: two processes must reproduce one exactly
# (up to the order of float sums), which makes "matches the single-process run" a sharp test.
EXACT = ["--model", "mult-dae", "--set", "dropout=0", "--set", "batch_size=100", "--epochs", "4"]
# rank 0 dies right after writing the checkpoint of epoch RECVAE_TEST_CRASH_AT
CRASH_HOOK = """\
import os
if os.environ.get("RANK") == "0" and os.environ.get("RECVAE_TEST_CRASH_AT"):
    from recvae.models.autoencoders import training

    _save = training._save

    def _save_then_die(checkpoint, step, state):
        _save(checkpoint, step, state)
        if state.epoch == int(os.environ["RECVAE_TEST_CRASH_AT"]):
            os._exit(3)

    training._save = _save_then_die
"""


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """ml-latest-small ingested with the paper's protocol (60 + 60 held-out users)."""
    out = tmp_path_factory.mktemp("data") / "ml-latest-small"
    assert main(["ingest", "--source", "movielens", "--path", str(ZIP), "--out", str(out),
                 "--n-heldout-users", "60"]) == 0
    return out


def torchrun(*args: str, env: dict[str, str] | None = None, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*distributed.torchrun_command(2), *args], capture_output=True, text=True, timeout=600,
        cwd=cwd, env={**os.environ, **(env or {})},
    )


def history(model_dir: Path) -> list[dict]:
    return json.loads((model_dir / "training.json").read_text())["history"]


# --------------------------------------------------------------------------- torchrun, end to end


@pytest.mark.slow
def test_torchrun_trains_checkpoints_resumes_logs_one_run_and_matches_one_process(
    small: Path, tmp_path: Path, capsys
) -> None:
    """Acceptance: ``torchrun --nproc_per_node 2 -m recvae train`` on ml-latest-small with gloo.

    A first run dies after its epoch-2 checkpoint; ``recvae train --nproc 2 --resume`` (which
    execs torchrun) continues at epoch 3, prints each epoch once, logs one MLflow run and
    saves a model equal to the single-process one: same losses (rel. 1e-5) and validation and
    test NDCG (abs. 1e-4; only float summation order differs, see
    tests/models/autoencoders/test_ddp_training.py).
    """
    single = tmp_path / "single"
    assert main(["train", "--data", str(small), *EXACT, "--out", str(single), "--no-track",
                 "--quiet"]) == 0
    capsys.readouterr()

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(CRASH_HOOK)
    ddp = tmp_path / "ddp"
    crashed = torchrun("train", "--data", str(small), *EXACT, "--out", str(ddp), "--no-track",
                       "--quiet", cwd=tmp_path,
                       env={"PYTHONPATH": os.pathsep.join([str(hook), str(REPO)]),
                            "RECVAE_TEST_CRASH_AT": "2"})
    assert crashed.returncode != 0
    checkpoint = tmp_path / ".ddp.work" / "checkpoints" / "mult-dae" / "checkpoint.pt"
    assert torch.load(checkpoint, weights_only=True)["state"]["epoch"] == 2
    assert not ddp.exists()

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    resumed = subprocess.run(
        [sys.executable, "-m", "recvae", "train", "--data", str(small), *EXACT, "--out", str(ddp),
         "--resume", "--tracking-uri", uri, "--experiment", "ddp", "--quiet", "--nproc", "2"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    epochs = [line.split()[2] for line in resumed.stdout.splitlines() if "] epoch" in line]
    assert epochs == ["3", "4"]  # resumed after epoch 2; rank 0 alone prints
    assert resumed.stdout.count(f"saved {ddp}") == 1

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    # epochs 3, 4 as they ran, then 1, 2 from the checkpoint's history (the tracker completes
    # the curve of a resumed run with the epochs no report carried)
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(steps) == [1, 2, 3, 4]

    ours, theirs = history(ddp), history(single)
    assert [h["epoch"] for h in ours] == [1, 2, 3, 4]
    for got, want in zip(ours, theirs, strict=True):
        assert got["train/loss"] == pytest.approx(want["train/loss"], rel=1e-5)
        assert got["val/ndcg_at_100"] == pytest.approx(want["val/ndcg_at_100"], abs=1e-4)
    assert run.data.metrics["test/ndcg_at_100"] == pytest.approx(
        _test_ndcg(single, small), abs=1e-4)


def _test_ndcg(model_dir: Path, data: Path) -> float:
    from recvae.data.dataset import Dataset
    from recvae.evaluation import evaluate
    from recvae.models import load_model

    model = load_model(model_dir)
    return evaluate(model.score, Dataset.load(data).test, ks=(100,)).means["ndcg_at_100"]


@pytest.mark.slow
def test_pipeline_trains_a_model_in_two_processes_and_refits_it(tmp_path: Path) -> None:
    cfg = load_config(REPO / "pipelines" / "quickstart.yaml", {
        "data.path": str(ZIP), "data.out": str(tmp_path / "data"),
        "output_dir": str(tmp_path / "runs"), "refit": True, "recommend.k": 5,
        "models": [{"model": "mult-dae", "nproc": 2,
                    "params": {"epochs": 2, "batch_size": 100, "dropout": 0.0}}],
    })
    (outcome,) = run_pipeline(cfg, track=False, show_progress=False)
    assert outcome.ok, outcome.error
    assert outcome.refit_epochs in (1, 2)
    assert outcome.metrics["val/ndcg_at_100"] > 0 and outcome.metrics["test/ndcg_at_100"] > 0
    refitted = MultDAE.load(outcome.model_dir)
    assert refitted.epochs == outcome.refit_epochs and refitted.best_epoch_ == outcome.refit_epochs
    assert "val/ndcg_at_100" not in refitted.history_[-1]  # trained on training + validation


# --------------------------------------------------------------------------- plumbing, one process


def test_nproc_execs_torchrun_without_the_flag(small: Path, monkeypatch) -> None:
    calls: list[list[str]] = []

    def execv(path: str, argv: list[str]) -> None:
        calls.append(argv)
        raise SystemExit(0)

    monkeypatch.setattr(os, "execv", execv)
    with pytest.raises(SystemExit):
        main(["train", "--data", str(small), "--model", "mult-vae", "--nproc", "3", "--out", "m",
              "--epochs", "2"])
    assert calls == [[*distributed.torchrun_command(3), "train", "--data", str(small), "--model",
                      "mult-vae", "--out", "m", "--epochs", "2"]]
    assert calls[0][1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "3"]


@pytest.mark.parametrize(("args", "match"), [
    (["--model", "ease", "--nproc", "2"], "ease does not train data-parallel"),
    (["--model", "mult-vae", "--nproc", "0"], "--nproc: expected a positive integer, got '0'"),
    (["--model", "recvae", "--nproc", "2"], "recvae does not train data-parallel"),
])
def test_nproc_errors(small: Path, args: list[str], match: str, capsys) -> None:
    assert main(["train", "--data", str(small), "--out", "m", *args]) == 2
    assert match in capsys.readouterr().err


def test_pipeline_nproc_is_checked(tmp_path: Path) -> None:
    def config(model: dict) -> None:
        load_config(REPO / "pipelines" / "quickstart.yaml", {"models": [model]})

    with pytest.raises(RecvaeError, match=r"models\[0\]\.nproc: ease does not train data-parallel"):
        config({"model": "ease", "nproc": 2})
    with pytest.raises(RecvaeError, match=r"nproc: expected a positive integer"):
        config({"model": "mult-vae", "nproc": 0})
    config({"model": "mult-vae", "nproc": 4})
    with pytest.raises(RecvaeError, match=r"models\[0\]\.nproc: recvae does not train data-parallel"):
        config({"model": "recvae", "nproc": 2})
    # search trials train in one process: a searched model may not ask for processes
    with pytest.raises(RecvaeError, match=r"models\[0\]\.nproc: search trials train in one process"):
        config({"model": "mult-vae", "nproc": 2, "search": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}}})


def test_fit_distributed_runs_recvae_train_and_replays_the_history(
    small: Path, tmp_path: Path, monkeypatch
) -> None:
    """The torchrun command line, the params file, the saved model loaded back and its epochs
    handed to the tracker's callbacks (the launch itself is stood in for by an in-process fit)."""
    seen: dict = {}

    def fake_run(cmd: list[str]) -> subprocess.CompletedProcess:
        seen["cmd"] = cmd
        args = cmd[len(distributed.torchrun_command(2)):]
        params = yaml.safe_load(Path(args[args.index("--params") + 1]).read_text())
        seen["params"] = params
        from recvae.data.dataset import Dataset

        ds = Dataset.load(args[args.index("--data") + 1])
        MultDAE(**params).fit(ds.for_refit() if "--refit" in args else ds).save(
            args[args.index("--out") + 1])
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(fit.subprocess, "run", fake_run)
    from recvae.config import ModelConfig

    mc = ModelConfig("mult-dae", label="dae", params={"epochs": 3, "patience": None}, nproc=2)
    reports: list = []
    ctx = RunContext(Layout(tmp_path), device="cpu", show_progress=False, resume=True, data_dir=small)
    model = fit.fit_distributed(mc, ctx, tmp_path / "out", refit=True, callbacks=[reports.append])
    args = seen["cmd"][len(distributed.torchrun_command(2)):]
    assert args[:2] == ["train", "--data"] and {"--refit", "--resume", "--no-track",
                                                 "--quiet"} <= set(args)
    assert args[args.index("--label") + 1] == "dae" and args[args.index("--device") + 1] == "cpu"
    assert seen["params"] == {"epochs": 3, "patience": None}
    assert isinstance(model, MultDAE) and model.best_epoch_ == 3
    assert [r.epoch for r in reports] == [1, 2, 3] and all(r.is_best for r in reports)
    assert "train/loss" in reports[0].metrics and "epoch" not in reports[0].metrics


def test_fit_distributed_reports_a_failed_launch(small: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(fit.subprocess, "run",
                        lambda cmd: subprocess.CompletedProcess(cmd, 1))
    from recvae.config import ModelConfig

    with pytest.raises(RecvaeError, match="training in 2 processes failed"):
        fit.fit_distributed(ModelConfig("mult-dae", nproc=2), RunContext(Layout(tmp_path), data_dir=small),
                            tmp_path / "o")


def test_one_process_outside_torchrun(monkeypatch) -> None:
    for var in ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.world() == (0, 1) and distributed.is_main()
    assert not distributed.launched_by_torchrun() and not distributed.init_from_env()
    t = torch.ones(3)
    assert distributed.all_reduce_sum(t) is t and distributed.broadcast({"a": 1}) == {"a": 1}
    cores = distributed.default_threads()
    assert distributed.local_device(torch.device("cuda")) == torch.device("cuda", 0)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.default_threads() == max(1, cores // 2)
    assert distributed.local_device(torch.device("cuda")) == torch.device("cuda", 1)
    assert distributed.local_device(torch.device("cuda", 3)) == torch.device("cuda", 3)
    assert distributed.local_device(torch.device("cpu")) == torch.device("cpu")
