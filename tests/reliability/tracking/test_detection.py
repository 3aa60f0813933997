"""A tracking server that stops answering is given up within 15 s in all, retries and backoff
included: a hung one (accepts connections, never answers), a stopped one (nothing listens), and
a real ``mlflow server`` frozen with SIGSTOP in the middle of a run."""

from __future__ import annotations

import contextlib
import http.server
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from recvae.tracking import Tracker
from recvae.tracking import guard as guard_module
from recvae.tracking.guard import DETECT_WITHIN, StoreTimeout, bounded_call, probe
from recvae.tracking.sync import StoreWriter
from tests.reliability.tracking.mlflow_server import MlflowServer
from tests.reliability.tracking.test_local_first import track
from tests.servers import free_port


@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """A loopback port that accepts every connection and never sends a byte (a hung server)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                held.append(listener.accept()[0])  # kept open, never read, never answered

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


@contextlib.contextmanager
def health_server() -> Iterator[tuple[str, list[float]]]:
    """A loopback server answering every GET with 200; yields its URL and the times it was asked."""
    asked: list[float] = []

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            asked.append(time.monotonic())
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()


def time_to_offline(uri: str, tmp_path: Path) -> tuple[float, Tracker]:
    """Seconds from opening a run on ``uri`` until the tracker has given the store up."""
    tracker = Tracker(uri, check=False, output_dir=tmp_path / "out")
    start = time.monotonic()
    with tracker.start_run("m", kind="model"):
        pass
    assert tracker.offline
    return time.monotonic() - start, tracker


def test_a_hung_server_is_given_up_within_15_s(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with silent_server() as url:
        took, tracker = time_to_offline(url, tmp_path)
    assert took < DETECT_WITHIN, took  # MLflow's defaults: 120 s × 8 attempts; recvae's before: 47 s
    assert "timed out" in tracker.guard.error
    assert capsys.readouterr().err.count("recvae: warning: MLflow tracking") == 1


def test_a_stopped_server_is_given_up_at_once(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    took, tracker = time_to_offline(f"http://127.0.0.1:{free_port()}", tmp_path)
    assert took < 3, took
    assert "Connection refused" in tracker.guard.error
    assert capsys.readouterr().err.count("recvae: warning: MLflow tracking") == 1


def test_the_watchdog_gives_up_a_call_whose_server_stops_answering() -> None:
    """A call that outlasts MLflow's own per-request bounds (MLflow swallows some failed requests
    and goes on to the next) is given up when the server fails a liveness probe."""
    with silent_server() as url:
        start = time.monotonic()
        with pytest.raises(StoreTimeout, match=r"no answer for \d+ s, and its /health probe: timed out"):
            bounded_call(url, lambda: time.sleep(60))
        took = time.monotonic() - start
    assert guard_module.PROBE_AFTER <= took < DETECT_WITHIN, took
    start = time.monotonic()
    with pytest.raises(StoreTimeout, match="Connection refused"):
        bounded_call(f"http://127.0.0.1:{free_port()}", lambda: time.sleep(60))
    assert time.monotonic() - start < guard_module.PROBE_AFTER + 2


def test_the_watchdog_lets_a_long_call_to_a_live_server_finish(monkeypatch: pytest.MonkeyPatch) -> None:
    """A large upload to a server that still answers takes the time it needs."""
    monkeypatch.setattr(guard_module, "PROBE_AFTER", 0.3)
    monkeypatch.setattr(guard_module, "PROBE_EVERY", 0.3)
    with health_server() as (url, asked):
        assert probe(url) is None
        asked.clear()
        assert bounded_call(url, lambda: time.sleep(1.5) or "uploaded") == "uploaded"
    assert len(asked) >= 3  # probed while it ran, and each answer let it go on
    with pytest.raises(ZeroDivisionError):  # the call's own errors reach the caller
        bounded_call(url, lambda: 1 / 0)


@pytest.mark.slow
@pytest.mark.parametrize("before", ["artifact", "epoch"])
def test_a_frozen_mlflow_server_stalls_training_less_than_15_s(
    before: str, tmp_path: Path, store_template: Path, store_dir: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """A real ``mlflow server`` frozen (SIGSTOP) just before an artifact upload or an epoch's
    metrics: that one call keeps training waiting less than 15 s (47 s before), and the pipeline
    ends with every output local."""
    db = store_dir / "served.db"
    shutil.copyfile(store_template, db)
    server = MlflowServer(db, tmp_path / "server").start()
    try:
        server.wait()
        out = tmp_path / "out"
        tracker = Tracker(server.url, output_dir=out)
        real, stalls = StoreWriter.apply, []

        def apply(self, record, op):  # noqa: ANN001, ANN202
            if not stalls and record.name == "popularity" and op["op"] == before and op.get("epoch", 3) == 3:
                server.freeze()
                start = time.monotonic()
                try:
                    return real(self, record, op)
                finally:
                    stalls.append(time.monotonic() - start)
            return real(self, record, op)

        monkeypatch.setattr(StoreWriter, "apply", apply)
        start = time.monotonic()
        track(tracker, out)
        took = time.monotonic() - start
        assert tracker.offline and len(stalls) == 1
        assert stalls[0] < DETECT_WITHIN, stalls
        # the rest logs locally at once; the end tries the store once more with a 3 s probe
        assert took < stalls[0] + 15, took
        assert capsys.readouterr().err.count("recvae: warning: MLflow tracking") == 1
        assert len(tracker.not_logged()) == 3
    finally:
        server.stop()
