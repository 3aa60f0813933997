"""Issue 11's tracking acceptance, measured with the real CLI and a real ``mlflow server``.

(a) outage: the server is stopped (SIGTERM) at epoch 3 of the quickstart's Mult-VAE and started
    again only after the pipeline ended: exit status, outputs in output_dir, how long training
    stalled; then ``recvae sync``: runs, RUNNING runs, metrics against an uninterrupted run, and
    what a second sync adds. (a') the same with a hung server (SIGSTOP) for the stall.
(b) race: trials of N concurrent ``recvae run`` on a fresh folder (no mlflow.db, on disk).
(c) kill -9 during ``recvae run`` at epoch 3, then ``--resume``: runs per model, the curve,
    best_epoch, RUNNING runs.

    python benchmarks/tracking_reliability.py --json benchmarks/results/tracking_reliability.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(REPO))
from _common import print_table, write_json  # noqa: E402

from tests.reliability.tracking.mlflow_server import MlflowServer, fast_dir  # noqa: E402
from tests.reliability.tracking.runs import comparable, store_view  # noqa: E402

EPOCH_LINE = re.compile(r"\[mult-vae\] epoch +(\d+)")


def pipeline(tmp: Path, models: list[str], epochs: int, data: Path) -> Path:
    cfg = yaml.safe_load((REPO / "pipelines" / "quickstart.yaml").read_text())
    cfg["models"] = [m for m in cfg["models"] if m["model"] in models]
    for m in cfg["models"]:
        if "epochs" in m.get("params", {}):
            m["params"]["epochs"] = epochs
    cfg["data"].update(path=str(REPO / "data" / "ml-latest-small.zip"), out=str(data))
    cfg["device"] = "cpu"
    path = tmp / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def recvae(argv: list[str], cwd: Path, *, on_line=None) -> tuple[int, str, float]:  # noqa: ANN001
    """Run the CLI; ``on_line(line, proc)`` sees each output line. Returns (status, output, s)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "recvae.cli", *argv], cwd=cwd, env={**env, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if on_line is not None:
            on_line(line, proc)
    return proc.wait(), "".join(lines), time.perf_counter() - t0


def stall(out: Path) -> float:
    """The longest time between two logged Mult-VAE epochs beyond the epoch's own training and
    validation (read from the run's local record)."""
    journal = next((out / "tracking").glob("mult-vae.*")) / "journal.jsonl"
    epochs = [json.loads(x) for x in journal.read_text().splitlines() if '"op":"epoch"' in x]
    gaps = [
        (b["time"] - a["time"]) / 1000 - b["metrics"]["epoch_seconds"] - b["metrics"].get("val_seconds", 0)
        for a, b in zip(epochs, epochs[1:], strict=False)
    ]
    return max(gaps)


def outputs_present(out: Path, models: list[str]) -> bool:
    files = [out / "results.csv", out / "results.json"]
    for m in models:
        files += [out / "models" / m / "recvae_model.json", out / "recommendations" / f"{m}.parquet"]
        record = next((out / "tracking").glob(f"{m}.*"))
        files += [record / "artifacts" / f for f in ("metrics.json", "epochs.csv", "learning_curves.png")]
    return all(f.is_file() for f in files)


def outage(tmp: Path, yaml_path: Path, models: list[str], template: Path, reference: dict,
           freeze: bool) -> dict:
    db = tmp / "served.db"
    shutil.copyfile(template, db)
    server = MlflowServer(db, tmp / "server").start()
    try:
        boot = server.wait()
        out = tmp / "out"

        def stop_at_3(line: str, proc: subprocess.Popen) -> None:
            m = EPOCH_LINE.search(line)
            if m and int(m.group(1)) == 3:
                server.freeze() if freeze else server.stop()

        code, text, seconds = recvae(
            ["run", str(yaml_path), "--quiet", "--set", f"tracking.uri={server.url}",
             "--set", f"output_dir={out}"], tmp, on_line=stop_at_3,
        )
        row = {
            "scenario": "server hung (SIGSTOP) at epoch 3" if freeze else "server stopped at epoch 3",
            "exit": code, "pipeline_s": round(seconds, 1), "stall_s": round(stall(out), 1),
            "warnings": text.count("recvae: warning: MLflow tracking"),
            "outputs_in_output_dir": outputs_present(out, models), "server_boot_s": round(boot, 1),
        }
        server.stop()
        server.start()
        server.wait()
        code, text, seconds = recvae(["sync", str(out)], tmp)
        synced = store_view(server.url)
        row.update(
            sync_exit=code, sync_s=round(seconds, 1), runs=len(synced),
            running=sum(r["status"] == "RUNNING" for r in synced.values()),
            equal_to_uninterrupted=set(synced) == set(reference)
            and all(comparable(synced[n]) == comparable(reference[n]) for n in reference),
        )
        code, text, _ = recvae(["sync", str(out)], tmp)
        row["second_sync_adds_nothing"] = code == 0 and store_view(server.url) == synced
        return row
    finally:
        server.stop()


def race(tmp: Path, yaml_path: Path, procs: int, trials: int) -> dict:
    finished = 0
    for t in range(trials):
        fresh = tmp / f"fresh{t}"  # on disk, as users run it: <cwd>/mlflow.db
        fresh.mkdir()
        running = [
            subprocess.Popen(
                [sys.executable, "-m", "recvae.cli", "run", str(yaml_path), "--quiet",
                 "--models", "popularity", "--set", f"output_dir={fresh / f'runs{i}'}",
                 "--set", "tracking.log_model=false", "--set", "recommend.enabled=false"],
                cwd=fresh, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                env={**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
                     "PYTHONPATH": str(REPO)},
            )
            for i in range(procs)
        ]
        errors = [p.communicate()[1] for p in running]
        ok = all(p.returncode == 0 for p in running)
        finished += ok
        if not ok:
            print(f"trial {t}: " + " | ".join(e.strip().splitlines()[-1] for e in errors if e.strip()))
    return {"scenario": f"{procs} concurrent runs on a fresh folder", "trials": trials,
            "all_finished": finished}


def kill_resume(tmp: Path, yaml_path: Path, template: Path, epochs: int) -> dict:
    db = tmp / "kill.db"
    shutil.copyfile(template, db)
    argv = ["run", str(yaml_path), "--quiet", "--set", f"tracking.uri=sqlite:///{db}",
            "--set", f"output_dir={tmp / 'out'}"]

    def kill_at_3(line: str, proc: subprocess.Popen) -> None:
        m = EPOCH_LINE.search(line)
        if m and int(m.group(1)) == 3:
            proc.send_signal(signal.SIGKILL)

    killed, _, _ = recvae(argv, tmp, on_line=kill_at_3)
    code, _, _ = recvae([*argv, "--resume"], tmp)
    view = store_view(f"sqlite:///{db}")
    vae = view["mult-vae"]
    return {
        "scenario": "kill -9 at epoch 3, then --resume", "killed_exit": killed, "resume_exit": code,
        "runs": len(view), "running": sum(r["status"] == "RUNNING" for r in view.values()),
        "mult_vae_steps_once": [s for s, _ in vae["metrics"]["train/loss"]] == list(range(1, epochs + 1)),
        "best_epoch": vae["metrics"].get("best_epoch", [(None, None)])[-1][1],
        "learning_curves_png": "learning_curves.png" in vae["artifacts"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mult-vae,ease,popularity")
    p.add_argument("--epochs", type=int, default=10, help="Mult-VAE epochs (the quickstart has 60)")
    p.add_argument("--race-procs", type=int, default=2)
    p.add_argument("--race-trials", type=int, default=5)
    p.add_argument("--skip", default="", help="comma-separated: outage,hung,race,kill")
    p.add_argument("--json")
    args = p.parse_args()
    models = args.models.split(",")
    skip = set(args.skip.split(","))
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="recvae-bench-") as tmp_s, \
            tempfile.TemporaryDirectory(prefix="recvae-bench-", dir=fast_dir(Path(tmp_s))) as fast_s:
        tmp, fast = Path(tmp_s), Path(fast_s)
        yaml_path = pipeline(tmp, models, args.epochs, tmp / "data")
        template = fast / "template.db"
        from mlflow.tracking import MlflowClient

        MlflowClient(f"sqlite:///{template}").search_experiments()
        reference_db = fast / "reference.db"
        shutil.copyfile(template, reference_db)
        code, text, seconds = recvae(
            ["run", str(yaml_path), "--quiet", "--set", f"tracking.uri=sqlite:///{reference_db}",
             "--set", f"output_dir={tmp / 'reference'}"], tmp,
        )
        assert code == 0, text[-3000:]
        reference = store_view(f"sqlite:///{reference_db}")
        # the same measure without an outage: checkpoint writes and logging between epochs
        baseline = {"pipeline_s": round(seconds, 1), "stall_s": round(stall(tmp / "reference"), 1)}
        print(f"uninterrupted run: {baseline}")
        for name, freeze in (("outage", False), ("hung", True)):
            if name not in skip:
                work = fast / name
                work.mkdir()
                rows.append(outage(work, yaml_path, models, template, reference, freeze))
                print(rows[-1], flush=True)
        results = {"uninterrupted": baseline, "outage": rows}
        if "race" not in skip:
            results["race"] = race(tmp, yaml_path, args.race_procs, args.race_trials)
            print(results["race"], flush=True)
        if "kill" not in skip:
            work = fast / "kill"
            work.mkdir()
            results["kill_resume"] = kill_resume(work, yaml_path, template, args.epochs)
            print(results["kill_resume"], flush=True)
    print()
    print_table(rows)
    for key in ("race", "kill_resume"):
        if key in results:
            print_table([results[key]])
    write_json(args.json, {"models": models, "epochs": args.epochs, "load": os.getloadavg(), **results})


if __name__ == "__main__":
    main()
