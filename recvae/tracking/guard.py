"""The one door to the tracking store: bounded waits, and a switch to the local spool on failure.

Every MLflow call of a :class:`~recvae.tracking.Tracker` goes through :meth:`Guard.call`, which
runs it with :func:`bounded_call`: a store that does not answer is given up within
:data:`DETECT_WITHIN` (15 s) in total, retries and backoff included, whether it is stopped
(connection refused: about a second), hung (it accepts connections, never answers) or
unreachable. Two bounds make that:

- MLflow's own HTTP settings, per request (MLflow reads ``MLFLOW_HTTP_REQUEST_TIMEOUT``,
  ``..._MAX_RETRIES``, ``..._BACKOFF_FACTOR`` and ``..._BACKOFF_JITTER`` on every request; its
  defaults, 120 s and 7 retries with a backoff of 2, stall a run for many minutes): 5 s and one
  retry, so that one request to a hung server fails after 10 s. Values the user exported win
  (and then the bound is theirs).
- A watchdog per call, for an http(s) store: one call may make many requests, and MLflow
  swallows the failure of some of them and goes on to the next (``log_artifact`` asks for the
  server's capabilities until it has them, and their failure costs a full timeout before the
  upload's own), so per-request bounds alone do not bound a call. (Measured before these bounds:
  a call to a frozen ``mlflow server`` took 47 s; the issue saw 80-120 s on a loaded machine.)
  The call runs in a worker thread; while it is still
  running after :data:`PROBE_AFTER` seconds, the server's ``/health`` is probed (at most
  :data:`PROBE_TIMEOUT` s): no answer gives the call up at once, any answer lets it go on (a
  large upload to a live server takes the time it needs) and is asked again every
  :data:`PROBE_EVERY` s. A call given up keeps running in its thread until MLflow's own timeout
  ends it; its result is dropped (anything it still writes, ``recvae sync`` finds in the store
  and does not send twice).

The first call that fails turns the guard *offline* for the rest of the process: a warning is
printed once, and the tracker keeps everything in its local records (``output_dir/tracking``)
for ``recvae sync``. It does not probe the server again, on purpose: every probe of a dead or
hung server costs up to :data:`DETECT_WITHIN` of training time, and the records must be synced
afterwards anyway, so probing would buy nothing but stalls.

Example::

    guard = Guard("http://mlflow:5000", hint="run `recvae sync runs/x` when it is back")
    ok, run = guard.call("create the run", client.create_run, experiment_id)
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, TextIO, TypeVar

T = TypeVar("T")

#: MLflow's HTTP settings while a guarded call runs (unless exported by the user): one request
#: to a dead server fails at once (connection refused twice: urllib3 waits no backoff before a
#: first retry, so factor and jitter only matter to a user who exports more retries), to a
#: hung one after 10 s (two attempts of 5 s). MLflow takes the factor as an integer.
HTTP_SETTINGS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
}
#: The longest a store that stopped answering keeps a guarded call waiting.
DETECT_WITHIN = 15.0
#: The watchdog of a call to an http(s) store: when it first probes the server, how long a
#: probe may wait, and how often a live server is probed again while the call goes on.
#: PROBE_AFTER + PROBE_TIMEOUT (11 s) leaves DETECT_WITHIN some room for a loaded machine.
PROBE_AFTER = 8.0
PROBE_TIMEOUT = 3.0
PROBE_EVERY = 5.0


class StoreTimeout(TimeoutError):
    """A call to the store given up by its watchdog: the server did not answer a probe."""


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


def is_http(uri: str) -> bool:
    """Whether ``uri`` is a tracking server (http or https), as opposed to a database or folder."""
    return urllib.parse.urlparse(uri).scheme.lower() in ("http", "https")


def probe(uri: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None when the server at ``uri`` answers ``GET /health`` within ``timeout`` seconds with
    any HTTP response (a 401 or 404 is an answer too: something listens and responds); else why
    not (``timed out``, ``[Errno 111] Connection refused``)."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError) as e:
        return str(getattr(e, "reason", e))
    except ValueError:  # a URL urllib cannot open (user:password@host): no verdict, and the
        return None     # call stays under MLflow's own per-request bounds


def bounded_call(uri: str, fn: Callable[[], T]) -> T:
    """``fn()`` with MLflow's HTTP settings bounded (:func:`http_settings`) and, for an http(s)
    store, under the watchdog described in the module docstring: raises :class:`StoreTimeout`
    as soon as the server fails a probe while ``fn`` waits, so within :data:`DETECT_WITHIN` of
    the server going away. ``fn``'s own exceptions propagate."""
    if not is_http(uri):
        with http_settings():
            return fn()
    outcome: dict[str, Any] = {}
    done = threading.Event()
    context = contextvars.copy_context()  # MLflow keeps some state in context variables

    def work() -> None:
        try:
            with http_settings():
                outcome["value"] = context.run(fn)
        except BaseException as e:  # handed to the caller's thread below
            outcome["error"] = e
        finally:
            done.set()

    start = time.monotonic()
    threading.Thread(target=work, name="recvae-store-call", daemon=True).start()
    wait = PROBE_AFTER
    while not done.wait(wait):
        problem = probe(uri)
        if problem is not None and not done.is_set():
            raise StoreTimeout(
                f"no answer for {time.monotonic() - start:.0f} s, and its /health probe: {problem}"
            )
        wait = PROBE_EVERY
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class Guard:
    """Runs MLflow calls with bounded waits (:func:`bounded_call`); after the first failure, runs
    none.

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
                return True, bounded_call(self.uri, lambda: fn(*args, **kwargs))
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
