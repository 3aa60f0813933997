"""A real ``mlflow server`` on loopback for the reliability tests and benchmarks: start, stop
(SIGTERM to its process group, as an operator would), freeze (SIGSTOP: a hung server), restart
on the same store and port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.servers import free_port, stop


def fast_dir(fallback: Path) -> Path:
    """/dev/shm where there is one: MLflow's SQLite migrations are fsync-bound on a disk."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else fallback


class MlflowServer:
    """``mlflow server`` with a SQLite store ``db`` (or any backend store URI, e.g. PostgreSQL's)
    and artifacts under ``root/artifacts``."""

    def __init__(self, db: Path | str, root: Path, port: int | None = None) -> None:
        self.backend = db if isinstance(db, str) and "://" in db else f"sqlite:///{db}"
        self.root = Path(root)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = self.root / "server.log"

    def start(self) -> MlflowServer:
        """Start it (returns at once: call :meth:`wait` before using it)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                 self.backend, "--artifacts-destination", str(self.root / "artifacts"),
                 "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
                cwd=self.root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                # no GenAI job runner: faster start, nothing left behind in /dev/shm
                env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            )
        return self

    def wait(self, limit: float = 180.0) -> float:
        """Block until ``/health`` answers; returns the seconds waited."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as resp:
                    if resp.status == 200:
                        return time.monotonic() - t0
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"mlflow server not up after {limit:.0f} s:\n{self.tail()}")

    def stop(self) -> None:
        """SIGTERM to the server and its workers (its own process group); SIGKILL after 10 s."""
        if self.proc is not None:
            stop(self.proc, timeout=10)

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts connections, nothing answers (a hung server)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text()[-n:] if self.log.is_file() else ""
