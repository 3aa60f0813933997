"""Every command of the README runs as written, on the bundled data.

The ``bash`` blocks are read from ``README.md`` and run line by line, in order, in a copy of the
repository (its ``.venv`` linked in), as a user would after command 1. What is not run:
comment lines, and the setup steps of command 1 (``python3 -m venv``, ``pip install``,
``bash .ci/run``), which are what ``.ci/run`` itself does; the test checks they are. Servers
(``recvae ui``, ``mlflow models serve``) are started, must answer, and are stopped at the end of
their block. ``<MLFLOW_RUN_ID>`` and ``<MODEL_ID>`` are replaced with what the commands before
printed. ``--max-epochs 2`` (a documented option of ``recvae train`` and ``recvae run``) is added
to each training command to keep it short: the rest stays the real command.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.servers import free_port, stop, wait_for

REPO = Path(__file__).resolve().parents[1]
SETUP = ("python3 -m venv .venv", ".venv/bin/pip install ", "bash .ci/run")
SERVERS = {"recvae ui": "/health", "mlflow models serve": "/ping"}

pytestmark = pytest.mark.slow


def bash_blocks(text: str) -> list[list[str]]:
    """The command lines of each fenced ``bash`` block (comment-only and blank lines dropped)."""
    blocks = re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)
    # a line ending in a backslash continues on the next, as in a shell
    return [[ln for ln in re.sub(r"\\\n\s*", "", b).splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
            for b in blocks]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0








def test_readme_setup_steps_are_what_ci_runs() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    first = bash_blocks((REPO / "README.md").read_text())[0]
    setup = [part.strip() for line in first for part in line.split("&&")
             if part.strip().startswith(SETUP)]
    assert setup == ["python3 -m venv .venv", ".venv/bin/pip install torch==2.13.0",
                     ".venv/bin/pip install -e .", "bash .ci/run"], setup
    assert "-m venv .venv" in ci and "pip install -q torch==2.13.0" in ci
    assert 'pip install -q -e ".[dev]"' in ci


def test_readme_commands_run_as_written(tmp_path: Path) -> None:
    if not (REPO / ".venv" / "bin" / "recvae").exists():
        pytest.skip("needs the repository's .venv (command 1)")
    work = tmp_path / "repo"
    shutil.copytree(REPO / "pipelines", work / "pipelines")
    (work / "data").mkdir()
    shutil.copy(REPO / "data" / "ml-latest-small.zip", work / "data")
    (work / ".venv").symlink_to(REPO / ".venv")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RECVAE_"))}
    output, ran = "", []
    for number, block in enumerate(bash_blocks((REPO / "README.md").read_text()), 1):
        activated, servers = False, []
        try:
            for line in block:
                for part in (p.strip() for p in line.split("&&")):
                    if part.startswith(SETUP):
                        continue  # .ci/run does these (test_readme_setup_steps_are_what_ci_runs)
                    if part.startswith("source .venv/bin/activate"):
                        activated = True
                    command = short(substitute(part, output))
                    server = next((s for s in SERVERS if s in command), None)
                    if server:
                        port = int(m.group(1)) if (m := re.search(r"--port (\d+)", command)) else 5000
                        if not port_free(port):  # a shared machine: another user's server
                            new = free_port()
                            command = command.replace(f"--port {port}", "") + f" --port {new}"
                            block = [b.replace(f":{port}", f":{new}") for b in block]
                            port = new
                    script = (". .venv/bin/activate && " if activated else "") + command
                    ran.append(command)
                    if server:
                        log = tmp_path / f"server{len(servers)}.log"
                        with log.open("w") as out:
                            proc = subprocess.Popen(["bash", "-c", script], cwd=work, env=env,
                                                    stdout=out, stderr=subprocess.STDOUT,
                                                    start_new_session=True)
                        servers.append(proc)
                        seconds = wait_for(f"http://127.0.0.1:{port}{SERVERS[server]}", proc, log)
                        if server == "recvae ui":
                            assert seconds < 30, f"recvae ui answered after {seconds:.0f} s"
                        continue
                    t0 = time.monotonic()
                    done = subprocess.run(["bash", "-c", script], cwd=work, env=env, text=True,
                                          capture_output=True, timeout=600)
                    print(f"README {time.monotonic() - t0:6.1f} s  {command}")
                    output += done.stdout + done.stderr
                    assert done.returncode == 0, (
                        f"README block {number}: {command}\n{(done.stdout + done.stderr)[-4000:]}")
        finally:
            for proc in servers:
                stop(proc)
    # the commands did their jobs
    assert (work / "runs" / "quickstart" / "comparison.csv").is_file()
    # the README's outputs go under runs/ (git ignores it), none into the repository root
    assert (work / "runs" / "recs.parquet").is_file() and (work / "runs" / "recs.csv").is_file()
    assert not (work / "recs.parquet").exists() and not (work / "recs.csv").exists()
    assert re.search(r'"user_id": ?7, ?"rank": ?5', output), "serving returned 5 rows for user 7"
    assert any(c.startswith("curl") for c in ran) and any("recvae ui" in c for c in ran)


def short(command: str) -> str:
    """A training command (``recvae train``, ``recvae run`` but its ``--dry-run``) capped at two
    epochs with ``--max-epochs 2``."""
    if "--dry-run" in command:
        return command
    return re.sub(r"(\brecvae (?:train|run))(?=\s)", r"\1 --max-epochs 2", command)


def substitute(command: str, output: str) -> str:
    """README placeholders → what the commands before printed (the last one)."""
    for placeholder, pattern in (("<MLFLOW_RUN_ID>", r"MLflow run:\s+([0-9a-f]{32})"),
                                 ("<MODEL_ID>", r"models:/(m-[0-9a-f]{32})")):
        if placeholder in command:
            found = re.findall(pattern, output)
            assert found, f"{placeholder}: no earlier command printed one"
            command = command.replace(placeholder, found[-1])
    return command
