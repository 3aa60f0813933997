"""A real ``mlflow server`` stopped at epoch 3 of a quickstart model and started again only after
the pipeline ended: the pipeline finishes with every output, and ``recvae sync`` leaves the store
as an uninterrupted run would have (issue 11's acceptance)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from recvae import cli
from recvae.run import fit
from recvae.tracking.guard import DETECT_WITHIN
from tests.reliability.tracking.mlflow_server import MlflowServer
from tests.reliability.tracking.runs import comparable, pipeline_file, store_view

pytestmark = pytest.mark.slow
STOP_AT = 3


def test_server_stopped_at_epoch_3_then_sync(
    tmp_path: Path, store_template: Path, store_dir: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture, record_property: Callable[[str, object], None],
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    served, reference = store_dir / "served.db", store_dir / "reference.db"
    shutil.copyfile(store_template, served)
    shutil.copyfile(store_template, reference)
    server = MlflowServer(served, tmp_path / "server").start()
    try:
        yaml_path = pipeline_file(tmp_path)
        run = ["run", str(yaml_path), "--quiet"]
        # the uninterrupted run, into a SQLite store, while the server boots (~20 s)
        ref_out = tmp_path / "reference"
        assert cli.main([*run, "--set", f"tracking.uri=sqlite:///{reference}",
                         "--set", f"output_dir={ref_out}"]) == 0
        server.wait()
        capsys.readouterr()

        # the same run; the server is stopped (SIGTERM) right after epoch 3 of mult-vae
        seen: dict[int, tuple[float, dict]] = {}
        real_print_epoch = fit.print_epoch

        def print_and_stop(run_name, stream=None):  # noqa: ANN001, ANN202
            inner = real_print_epoch(run_name, stream)

            def on_epoch(report):  # noqa: ANN001, ANN202
                inner(report)
                if run_name == "mult-vae":
                    seen[report.epoch] = (time.monotonic(), report.metrics)
                    if report.epoch == STOP_AT:
                        server.stop()
            return on_epoch

        monkeypatch.setattr(fit, "print_epoch", print_and_stop)
        out = tmp_path / "out"
        code = cli.main([*run, "--set", f"tracking.uri={server.url}", "--set", f"output_dir={out}"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        assert captured.err.count("recvae: warning: MLflow tracking") == 1, captured.err
        assert f"recvae sync {out}" in captured.err

        # training stalled only for the one failing call
        t3, _ = seen[STOP_AT]
        t4, m4 = seen[STOP_AT + 1]
        stall = (t4 - t3) - m4["epoch_seconds"] - m4.get("val_seconds", 0.0)
        record_property("stall_seconds", round(stall, 1))  # in the JUnit XML, not among the dots
        assert stall < DETECT_WITHIN, f"training stalled {stall:.1f} s after the server stopped"

        # every output is in output_dir
        for name in ("mult-vae", "popularity"):
            assert (out / "models" / name / "recvae_model.json").is_file()
            assert len(pd.read_parquet(out / "recommendations" / f"{name}.parquet")) > 0
        results = json.loads((out / "results.json").read_text())
        assert [m["ok"] for m in results["models"]] == [True, True]
        assert (out / "results.csv").read_text().count("\n") == 3
        vae = next((out / "tracking").glob("mult-vae.*"))
        epochs = pd.read_csv(vae / "artifacts" / "epochs.csv")
        assert epochs["epoch"].tolist() == list(range(1, 7))
        assert json.loads((vae / "artifacts" / "metrics.json").read_text())["best_epoch"] is not None
        assert (vae / "artifacts" / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"

        # the server comes back; sync completes every run once
        server.start()
        server.wait()
        assert cli.main(["sync", str(out)]) == 0
        synced, expected = store_view(server.url), store_view(f"sqlite:///{reference}")
        assert set(synced) == set(expected) == {"quickstart", "mult-vae", "popularity"}
        for name in expected:
            assert comparable(synced[name]) == comparable(expected[name]), name
        assert [s for s, _ in synced["mult-vae"]["metrics"]["train/loss"]] == list(range(1, 7))
        assert "best_epoch" in synced["mult-vae"]["metrics"]
        assert all(r["status"] == "FINISHED" for r in synced.values())

        assert cli.main(["sync", str(out)]) == 0  # a second sync adds nothing
        assert "0 run(s) synced, 3 already complete" in capsys.readouterr().out
        assert store_view(server.url) == synced
    finally:
        server.stop()
