"""Local servers that tests start (mlflow server, mlflow models serve, recvae ui): a free
loopback port, waiting for an answer, stopping the whole process group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, log: Path, limit: float = 60.0) -> float:
    """Seconds until ``url`` answers 200; fails the test, with the log's tail, when the server
    exits first or stays silent for ``limit`` seconds."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return time.monotonic() - start
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{url} silent after {limit:.0f} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM to the server's process group (started with ``start_new_session``), SIGKILL when
    it is still there after ``timeout`` seconds; a stopped (SIGSTOP) server is woken first."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGCONT)
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
