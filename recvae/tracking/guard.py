"""The one door to the tracking store: bounded waits, and a switch to the local spool on failure.

Every MLflow call of a :class:`~recvae.tracking.Tracker` goes through :meth:`Guard.call`. The
call runs with MLflow's own HTTP settings bounded (MLflow reads ``MLFLOW_HTTP_REQUEST_TIMEOUT``,
``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ``..._BACKOFF_FACTOR`` and ``..._BACKOFF_JITTER`` from the
environment on every request; its defaults, 120 s and 7 retries with a backoff of 2, stall a run
for minutes per call). Values the user exported are left alone.

The first call that fails turns the guard *offline* for the rest of the process: a warning is
printed once, and the tracker keeps everything in its local records (``output_dir/tracking``)
for ``recvae sync``. It does not probe the server again, on purpose: every probe of a dead or
hung server costs up to ``timeout × (retries + 1)`` of training time, and the records must be
synced afterwards anyway, so probing would buy nothing but stalls.

Example::

    guard = Guard("http://mlflow:5000", hint="run `recvae sync runs/x` when it is back")
    ok, run = guard.call("create the run", client.create_run, experiment_id)
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO, TypeVar

T = TypeVar("T")

#: MLflow's HTTP settings while a guarded call runs (unless exported by the user): a dead server
#: fails a call after about 3 s (connection refused, 2 retries with 0 + 2 s of backoff), a hung
#: one after about 50 s (3 attempts of 15 s), once per process.
HTTP_SETTINGS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
}


def outage_errors() -> tuple[type[BaseException], ...]:
    """What a store failure looks like: MLflow's own errors (HTTP failures arrive wrapped in
    them), the requests/urllib3 errors that escape its wrappers, database errors, and OS errors
    (a full disk or a vanished mount under a local artifact store). Anything else is a bug and
    propagates."""
    from mlflow.exceptions import MlflowException

    errors: list[type[BaseException]] = [MlflowException, OSError]
    with contextlib.suppress(ImportError):
        import requests

        errors.append(requests.RequestException)
    with contextlib.suppress(ImportError):
        import sqlalchemy.exc

        errors.append(sqlalchemy.exc.SQLAlchemyError)
    return tuple(errors)


def describe_error(error: BaseException | str, limit: int = 300) -> str:
    """One line for a store failure: the innermost cause (``ConnectionRefusedError: [Errno 111]
    Connection refused``) rather than MLflow's wrapper, whose text repeats the URL three times."""
    if isinstance(error, str):
        text = error
    else:
        root, seen = error, set()
        while id(root) not in seen:
            seen.add(id(root))
            nxt = root.__cause__ or root.__context__ or getattr(root, "reason", None)
            if not isinstance(nxt, BaseException):
                break
            root = nxt
        text = f"{type(root).__name__}: {root}"
    first = next((line.strip() for line in text.splitlines() if line.strip()), text)
    return first[:limit]


@contextlib.contextmanager
def http_settings(settings: dict[str, str] | None = None) -> Iterator[None]:
    """MLflow's HTTP settings bounded for the block (restored after; user exports win)."""
    added = []
    for key, value in (settings or HTTP_SETTINGS).items():
        if key not in os.environ:
            os.environ[key] = value
            added.append(key)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


class Guard:
    """Runs MLflow calls with bounded waits; after the first failure, runs none.

    ``hint`` ends the one warning (what the user should do later); ``stream`` receives it.
    """

    def __init__(self, uri: str, *, hint: str = "", stream: TextIO | None = None) -> None:
        self.uri = uri
        self.hint = hint
        self.stream = stream
        self.error: str | None = None  # why the guard went offline
        self.failed_call: str | None = None
        self.failed_at: float | None = None  # when (time.time())
        self._lock = threading.RLock()  # epoch callbacks may run in worker threads

    @property
    def online(self) -> bool:
        return self.error is None

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[bool, T | None]:
        """``(True, fn(*args, **kwargs))``, or ``(False, None)`` when offline or when the call
        fails with a store error (which turns the guard offline). ``what`` names the call in
        the warning."""
        with self._lock:
            if not self.online:
                return False, None
            try:
                with http_settings():
                    return True, fn(*args, **kwargs)
            except outage_errors() as e:
                self.go_offline(what, e)
                return False, None

    def go_offline(self, what: str, error: BaseException | str) -> None:
        """Stop calling the store; print the warning (once)."""
        with self._lock:
            if not self.online:
                return
            self.error = describe_error(error)
            self.failed_call = what
            self.failed_at = time.time()
            print(
                f"recvae: warning: MLflow tracking at {self.uri} failed ({what}: {self.error}); "
                f"training goes on without it{'; ' + self.hint if self.hint else ''}",
                file=self.stream or sys.stderr, flush=True,
            )
