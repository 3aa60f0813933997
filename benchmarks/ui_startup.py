"""Time from `recvae ui` to the MLflow UI's first answer, and how many processes it starts.

Each variant serves a copy of the same SQLite store (schema already created) on a free loopback
port: the seconds until ``GET /`` answers 200 and the CPU seconds its processes spent until then
(about the wall time on a quiet machine: the start-up is single-threaded imports), the processes
in its tree when it answers and 5 s later (job runners start after the server), and whether
SIGTERM to the command stops them all.
``mlflow ui`` with its defaults is what ``recvae ui`` ran before (4 uvicorn workers and MLflow's
GenAI job runners), measured in the same run for the ratio.

    python benchmarks/ui_startup.py --json benchmarks/results/ui_startup.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
from _common import print_table, write_json  # noqa: E402

from tests.helpers import process_tree, session_processes  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(name: str, cmd: list[str], port: int, limit: float) -> dict[str, object]:
    """Start ``cmd``, poll ``GET /`` on ``port``, count its processes, stop it with SIGTERM."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    answered = None
    try:
        while time.perf_counter() - start < limit and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    if r.status == 200:
                        answered = time.perf_counter() - start
                        break
            except OSError:
                time.sleep(0.2)
        tree = process_tree(proc.pid)
        at_answer, cpu = len(tree), sum(_cpu_seconds(p) for p in tree)
        time.sleep(5)
        settled = len(process_tree(proc.pid))
        t_stop = time.perf_counter()
        proc.send_signal(signal.SIGTERM)  # the command only: it must stop what it started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        time.sleep(1)
        left = session_processes(proc.pid)
        stop_s = time.perf_counter() - t_stop
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever was left over
        except ProcessLookupError:
            pass
        proc.wait()
    return {
        "command": name,
        "first_answer_s": round(answered, 1) if answered is not None else None,
        # CPU the start-up took (imports are single-threaded): about the wall time when the
        # machine is quiet, whatever its load now
        "cpu_s_to_answer": round(cpu, 1),
        "processes_at_answer": at_answer,
        "processes_5s_later": settled,
        "left_after_sigterm": len(left),
        "stop_s": round(stop_s, 1),
    }


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and of its children that exited (``/proc/PID/stat``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime, stime, cutime, cstime: fields 14-17 of stat, 12-15 after the command name
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=float, default=180.0, help="seconds to wait for an answer")
    ap.add_argument("--json", help="write the results to this JSON file")
    args = ap.parse_args(argv)

    from mlflow.tracking import MlflowClient

    work = Path(tempfile.mkdtemp(prefix="ui-startup-"))
    try:
        template = work / "template.db"
        MlflowClient(f"sqlite:///{template}").search_experiments()  # schema, once
        variants = {
            "mlflow ui (recvae ui before)": lambda uri, port: [
                sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                "--host", "127.0.0.1", "--port", str(port)],
            "recvae ui": lambda uri, port: [
                sys.executable, "-m", "recvae.cli", "ui", "--tracking-uri", uri, "--port", str(port)],
        }
        rows = []
        for name, build in variants.items():
            db = work / f"{len(rows)}.db"
            shutil.copyfile(template, db)
            port = free_port()
            rows.append(measure(name, build(f"sqlite:///{db}", port), port, args.limit))
            print_table(rows[-1:])
        print()
        print_table(rows)
        write_json(args.json, {"results": rows, "cpu_count": os.cpu_count()})
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
