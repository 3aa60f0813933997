"""A throwaway PostgreSQL server for the tests of the team setup (one MLflow tracking server and
one Optuna study in PostgreSQL): ``initdb`` into a temporary folder, ``pg_ctl start`` on a free
loopback port, one database per name, stopped and removed at the end.

The binaries are Debian's (``apt-get install postgresql``: ``/usr/lib/postgresql/<version>/bin``)
or the first ``initdb`` on PATH. PostgreSQL refuses to run as root: as root it runs as the
``postgres`` user the package creates (through ``runuser``). Connections from 127.0.0.1 are
trusted (no password): the server listens on loopback only and lives as long as the test session.

Example::

    with PostgresServer(databases=("mlflow", "optuna")) as pg:
        pg.url("optuna")   # postgresql+psycopg2://recvae@127.0.0.1:<port>/optuna
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import pytest

from tests.servers import free_port

USER = "recvae"  # the database superuser initdb creates


class PostgresUnavailable(RuntimeError):
    """PostgreSQL cannot start here; the message says why (the test's skip or failure reason)."""


def find_bin() -> Path:
    """The folder of ``initdb`` and ``pg_ctl``: Debian's newest ``/usr/lib/postgresql/*/bin``,
    else the one on PATH."""
    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.parent.name))

    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: version(p.parent))
    if debian:
        return debian[-1].parent
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise PostgresUnavailable(
        "no PostgreSQL binaries (initdb) in /usr/lib/postgresql/*/bin or on PATH; "
        "install them with `apt-get install postgresql`"
    )


class PostgresServer:
    """A private PostgreSQL cluster on ``127.0.0.1:<port>`` with ``databases`` created."""

    def __init__(self, databases: tuple[str, ...] = ("mlflow", "optuna")) -> None:
        self.databases = databases
        self.port = free_port()
        self.bin = find_bin()
        self.run_as: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable(
                    "running as root and there is no 'postgres' user to run PostgreSQL as "
                    "(Debian's postgresql package creates it)"
                ) from None
            if shutil.which("runuser") is None:
                raise PostgresUnavailable("running as root without `runuser` to run PostgreSQL as 'postgres'")
            self.run_as = "postgres"
        self.root = Path(tempfile.mkdtemp(prefix="recvae-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` (MLflow's ``--backend-store-uri``, Optuna's storage).
        It names the driver: a bare ``postgresql://`` means psycopg 3 from SQLAlchemy 2.1 on
        (psycopg2 before), and the dev extra installs psycopg2-binary."""
        return f"postgresql+psycopg2://{USER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str | Path) -> None:
        command = [str(a) for a in args]
        if self.run_as:
            command = ["runuser", "-u", self.run_as, "--", *command]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=self.root,
                              env={**os.environ, "LC_ALL": "C"})
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            log = self.log.read_text()[-1500:] if self.log.is_file() else ""
            raise PostgresUnavailable(
                f"`{' '.join(command)}` failed ({proc.returncode}): {' / '.join(tail)}"
                + (f"\nserver log:\n{log}" if log else "")
            )

    def start(self) -> PostgresServer:
        if self.run_as:  # the cluster's folder belongs to the user the server runs as
            shutil.chown(self.root, self.run_as)
        self._run(self.bin / "initdb", "-D", self.data, "-U", USER, "--auth=trust", "--no-locale",
                  "--encoding=UTF8", "--no-instructions")
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off"  # a test cluster
        self._run(self.bin / "pg_ctl", "start", "-D", self.data, "-l", self.log, "-o", options,
                  "-w", "-t", "60")
        for name in self.databases:
            self._run(self.bin / "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, name)
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its folder."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(self.bin / "pg_ctl", "stop", "-D", self.data, "-m", "fast", "-w", "-t", "60")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_or_give_up(factory: Callable[[], PostgresServer] = PostgresServer) -> PostgresServer:
    """A started server from ``factory``; where PostgreSQL cannot start (no binaries, no driver,
    initdb or pg_ctl failing), the calling test fails under CI (``.ci/run`` installs PostgreSQL
    and the driver) and is skipped, with the reason, elsewhere."""
    server = None
    try:
        try:
            import psycopg2  # noqa: F401 - the driver the URLs name
        except ImportError:
            raise PostgresUnavailable(
                "the driver psycopg2 is not installed (pip install -e '.[dev]' installs psycopg2-binary)"
            ) from None
        server = factory()
        return server.start()
    except PostgresUnavailable as e:
        if server is not None:
            server.stop()
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL must run under CI (.ci/run installs it): {e}")
        pytest.skip(f"PostgreSQL cannot start here: {e}")
