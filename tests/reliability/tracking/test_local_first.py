"""Tracking that survives the store: local records, the guard, ``recvae sync``, dead runs closed,
resumed runs continued, a non-MLflow server refused. SQLite stores, a simulated outage; the real
``mlflow server`` stopped mid-run is in ``test_server_outage.py``."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException

from recvae import cli
from recvae.errors import RecvaeError
from recvae.evaluation import evaluate
from recvae.models.base import EpochReport
from recvae.models.ease import EASE
from recvae.models.popularity import Popularity
from recvae.recommend import write_recommendations
from recvae.tracking import Tracker, check_tracking_server, sync_output
from recvae.tracking.guard import HTTP_SETTINGS, Guard
from recvae.tracking.record import JOURNAL_FILE, RUN_FILE, RunRecord, list_records
from recvae.tracking.sync import StoreWriter
from tests.helpers import tiny_dataset
from tests.reliability.tracking.runs import REPO, store_view

EPOCHS = 5


@pytest.fixture
def outage(monkeypatch: pytest.MonkeyPatch) -> dict[str, int | bool]:
    """``state["down"] = True`` makes every store write fail as a dead server would."""
    state: dict[str, int | bool] = {"down": False, "refused": 0}

    def failing(fn):  # noqa: ANN001, ANN202
        def call(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            if state["down"]:
                state["refused"] = int(state["refused"]) + 1
                raise MlflowException("API request failed: [Errno 111] Connection refused")
            return fn(self, *args, **kwargs)
        return call

    for name in ("apply", "complete", "open_run", "experiment"):
        monkeypatch.setattr(StoreWriter, name, failing(getattr(StoreWriter, name)))
    return state


def track(tracker: Tracker, out: Path, outage: dict | None = None, stop_at: int | None = None) -> None:
    """A pipeline of two models with a learning curve, final metrics, a top-k file and a model;
    the store goes down (``outage``) at epoch ``stop_at`` of the first model."""
    ds = tiny_dataset()
    with tracker.start_pipeline("p", dataset=ds, config={"models": ["popularity", "ease"]}):
        for name, model in (("popularity", Popularity()), ("ease", EASE(l2=1.0))):
            with tracker.start_model(name, params={"model": {"name": name, **model.params()}},
                                     device="cpu"):
                callback = tracker.epoch_callback()
                model.fit(ds, callbacks=[callback])
                for epoch in range(1, EPOCHS + 1):
                    if outage is not None and epoch == stop_at and name == "popularity":
                        outage["down"] = True
                    callback(EpochReport(epoch, {"train/loss": 10.0 - epoch,
                                                 "val/ndcg_at_100": 0.1 * epoch}, is_best=epoch == 4))
                tracker.log_final(evaluate(model.score, ds.test, ks=(2,)).as_metrics("test"))
                topk = write_recommendations(model, ds, out / f"{name}.parquet", k=3, exclude="train")
                tracker.log_topk(topk.path)
                tracker.log_model(model, ds)


def test_outage_keeps_everything_and_sync_completes_it_once(
    store: str, tmp_path: Path, outage: dict, capsys: pytest.CaptureFixture
) -> None:
    reference = store.replace("mlflow.db", "reference.db")
    shutil.copyfile(store[len("sqlite:///"):], reference[len("sqlite:///"):])  # both empty
    track(Tracker(reference, check=False, output_dir=tmp_path / "ref"), tmp_path / "ref")

    out = tmp_path / "out"
    tracker = Tracker(store, check=False, output_dir=out)
    track(tracker, out, outage, stop_at=3)
    err = capsys.readouterr().err
    assert err.count("recvae: warning: MLflow tracking") == 1, err  # warned once
    assert "Connection refused" in err and f"recvae sync {out}" in err
    assert outage["refused"] == 1  # offline after the first failure: no call paid again
    assert tracker.offline and len(tracker.not_logged()) == 3

    # every output is local: the curve, metrics.json, the plot, the top-k file and the model
    records = {r.name: r for r in list_records(out)}
    assert set(records) == {"p", "popularity", "ease"}
    for name in ("popularity", "ease"):
        files = {p.name for p in records[name].artifacts_dir.iterdir()}
        assert {"metrics.json", "epochs.csv", "learning_curves.png"} <= files
        lines = (records[name].artifacts_dir / "epochs.csv").read_text().splitlines()
        assert [line.split(",")[0] for line in lines[1:]] == [str(e) for e in range(1, EPOCHS + 1)]
        doc = json.loads((records[name].artifacts_dir / "metrics.json").read_text())
        assert doc["best_epoch"] == 4 and "test/ndcg_at_2" in doc["metrics"]
        assert (records[name].path / "model" / "recvae_model" / "recvae_model.json").is_file()
    assert records["popularity"].run_id and not records["ease"].run_id  # created before the outage

    partial = store_view(store)  # what the store got before the outage: epochs 1-2 only
    assert [s for s, _ in partial["popularity"]["metrics"]["train/loss"]] == [1, 2]
    assert partial["popularity"]["status"] == "RUNNING" and "ease" not in partial
    # the store answered again when the pipeline ended: its runs say they are incomplete
    assert "tagged recvae.offline=true" in err
    for name in ("p", "popularity"):
        tags = partial[name]["tags"]
        assert tags["recvae.offline"] == "true", name
        assert "MLflow tracking failed at" in tags["mlflow.note.content"], name
        assert f"`recvae sync {out.resolve()}` completes it" in tags["mlflow.note.content"], name
    assert partial["popularity"]["tags"]["mlflow.note.content"].startswith("recvae model popularity\n\n")

    outage["down"] = False
    report = sync_output(out)
    assert (report.synced, report.failed) == (3, 0), report.lines
    synced, expected = store_view(store), store_view(reference)
    assert set(synced) == set(expected) == {"p", "popularity", "ease"}
    for name, want in expected.items():
        got = synced[name]
        assert got["status"] == "FINISHED", name
        assert got["params"] == want["params"], name
        assert got["metrics"] == want["metrics"], name  # every point once, the same values
        assert got["artifacts"] == want["artifacts"], name
        assert got["models"] == want["models"], name
        assert (got["parent"] is None) == (want["parent"] is None), name
    assert synced["ease"]["parent"] == synced["p"]["id"]
    assert synced["popularity"]["metrics"]["best_epoch"] == [(0, 4.0)]
    for name, want in expected.items():  # the marker is gone, the note is the run's own again
        assert "recvae.offline" not in synced[name]["tags"], name
        assert synced[name]["tags"].get("mlflow.note.content") == want["tags"].get("mlflow.note.content")

    again = sync_output(out)  # idempotent: nothing to add
    assert (again.synced, again.unchanged) == (0, 3)
    assert store_view(store) == synced


def test_a_partly_logged_run_is_completed_not_duplicated(store: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    track(Tracker(store, check=False, output_dir=out), out)
    before = store_view(store)
    for record in list_records(out):  # as if killed after the store took each entry, before
        record.meta["confirmed"] = 0  # the record could say so
        if record.name == "ease":  # ... or even before it could keep the new run's id
            record.meta["run_id"] = None
        record.save()
    report = sync_output(out)
    assert report.synced == 3 and all("nothing to add" in line for line in report.lines), report.lines
    assert store_view(store) == before  # found by id or by its recvae.run_uid tag: no new run


def test_dead_process_runs_are_killed_at_next_start_then_resumed(store: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import os
        from recvae.models.base import EpochReport
        from recvae.tracking import Tracker
        from tests.helpers import tiny_dataset
        tracker = Tracker({store!r}, check=False, output_dir={str(out)!r})
        with tracker.start_pipeline("p", dataset=tiny_dataset()):
            with tracker.start_model("m", device="cpu"):
                callback = tracker.epoch_callback()
                for epoch in (1, 2, 3):
                    callback(EpochReport(epoch, {{"train/loss": 10.0 - epoch}}, is_best=True))
                os._exit(9)  # like kill -9: nothing is closed
    """)
    subprocess.run([sys.executable, "-c", script], cwd=REPO, check=False, timeout=300,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    view = store_view(store)
    assert view["m"]["status"] == view["p"]["status"] == "RUNNING"

    # the next start in that folder closes them, with the reason
    with Tracker(store, check=False, output_dir=out).start_pipeline("other", dataset=tiny_dataset()):
        pass
    view = store_view(store)
    for name in ("p", "m"):
        assert view[name]["status"] == "KILLED", name
        assert "ended without closing the run" in view[name]["tags"]["recvae.killed_reason"]

    # --resume continues the same runs: one curve, no epoch twice, FINISHED
    resumed = Tracker(store, check=False, output_dir=out, resume=True)
    with resumed.start_pipeline("p", dataset=tiny_dataset()) as parent:
        with resumed.start_model("m", device="cpu") as child:
            callback = resumed.epoch_callback()
            for epoch in (3, 4, 5):  # epoch 3 again, as a checkpoint older than the log would
                callback(EpochReport(epoch, {"train/loss": 10.0 - epoch}, is_best=epoch == 5))
            resumed.complete_curve([{"epoch": e, "train/loss": 10.0 - e} for e in range(1, 6)], 5)
    view = store_view(store)
    assert (parent.run_id, child.run_id) == (view["p"]["id"], view["m"]["id"])
    assert view["m"]["metrics"]["train/loss"] == [(e, 10.0 - e) for e in range(1, 6)]
    assert view["m"]["metrics"]["best_epoch"] == [(0, 5.0)]
    assert view["m"]["status"] == view["p"]["status"] == "FINISHED"
    assert view["m"]["tags"]["recvae.resumes"] == "1"
    assert sorted(r.name for r in list_records(out)) == ["m", "other", "p"]


def test_an_exception_fails_its_run(store: str, tmp_path: Path) -> None:
    tracker = Tracker(store, check=False, output_dir=tmp_path)
    with pytest.raises(ValueError, match="boom"), tracker.start_model("m", device="cpu"):
        raise ValueError("boom")
    view = store_view(store)
    assert view["m"]["status"] == "FAILED"
    assert view["m"]["tags"]["recvae.error"] == "ValueError: boom"


def test_record_ignores_a_journal_line_cut_short(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    record = RunRecord.create(tmp_path / "tracking", name="m", kind="model", uri=None, experiment="e")
    record.append({"op": "params", "params": {"a": "1"}})
    with open(record.path / JOURNAL_FILE, "ab") as f:
        f.write('{"seq": 3, "op": "params", "params": {"é'.encode()[:-1])  # killed mid-write, mid-character
    loaded = RunRecord.load(record.path)
    assert [op["op"] for op in loaded.ops] == ["create", "params"]
    assert loaded.cut_line == 3
    loaded.append({"op": "tags", "tags": {"b": "2"}})  # the next entry replaces the cut one
    err = capsys.readouterr().err
    assert err == (f"recvae: warning: {record.path / JOURNAL_FILE}, line 3: cut short (its process was "
                   "killed while writing it); that entry is skipped\n")
    assert [(op["seq"], op["op"]) for op in RunRecord.load(record.path).ops] == [
        (1, "create"), (2, "params"), (3, "tags")]
    # a whole last entry whose newline was never written is kept, and the next one starts a line
    journal = record.path / JOURNAL_FILE
    journal.write_bytes(journal.read_bytes().rstrip(b"\n"))
    loaded = RunRecord.load(record.path)
    assert loaded.cut_line is None and loaded.last_seq == 3
    loaded.append({"op": "tags", "tags": {"c": "3"}})
    assert [op["seq"] for op in RunRecord.load(record.path).ops] == [1, 2, 3, 4]
    assert capsys.readouterr().err == ""
    (record.path / RUN_FILE).write_text("{}")
    with pytest.raises(RecvaeError, match="not a recvae run record"):
        RunRecord.load(record.path)


def test_guard_bounds_mlflow_http_settings_during_calls_only(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in HTTP_SETTINGS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")  # the user's own value wins
    guard = Guard("http://example.invalid")
    ok, seen = guard.call("read", lambda: {k: os.environ.get(k) for k in HTTP_SETTINGS})
    assert ok and seen["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"
    assert seen["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == HTTP_SETTINGS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # restored after the call
    with pytest.raises(ZeroDivisionError):  # a bug is not an outage
        guard.call("bug", lambda: 1 / 0)
    assert guard.online


class QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # its request log would go to stderr
        pass


@contextlib.contextmanager
def web_server(tmp_path: Path) -> Iterator[str]:
    """A plain static web server (``python -m http.server``) on loopback."""
    handler = lambda *a: QuietFiles(*a, directory=str(tmp_path))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_web_server_that_is_not_mlflow_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "index.html").write_text("<html>hello</html>")
    with web_server(tmp_path) as url:
        with pytest.raises(RecvaeError, match=r"is not an MLflow tracking server: .* HTTP 404 \(text/html\)"):
            check_tracking_server(url)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        code = cli.main(["run", str(REPO / "pipelines" / "quickstart.yaml"), "--models", "popularity"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("recvae: error: ") and "not an MLflow tracking server" in err
    assert len(err.splitlines()) == 1, err


def test_sync_with_the_store_down_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    record = RunRecord.create(tmp_path / "tracking", name="m", kind="model", uri=None, experiment="e")
    record.set_status("FINISHED")
    from tests.reliability.tracking.mlflow_server import free_port

    assert cli.main(["sync", str(tmp_path), "--tracking-uri", f"http://127.0.0.1:{free_port()}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is unreachable" in err and len(err.splitlines()) == 1, err
    assert cli.main(["sync", str(tmp_path / "nothing")]) == 2
    assert "no run records to sync" in capsys.readouterr().err


# A damaged journal line in the middle of a record (its line 3): what replaces it, what the error says.
DAMAGED = [
    (b'{"seq": 3, "op": "par\xffams"}', r"line 3: not UTF-8 text \(byte 0xff at column 22\)"),
    (b'{"seq": 3, "op": "params" "params": {}}',
     r"line 3: not JSON \(Expecting ',' delimiter at column 27\)"),
    (b'[3, "params"]', r"line 3: a JSON list, not an object"),
    (b'{"seq": 1, "op": "params", "params": {}}', r"line 3: entry number \(seq\) 1 does not follow 2"),
    (b'{"seq": 3, "op": "epoch", "epoch": 1}', r"line 3: a 'epoch' entry without metrics, time"),
    (b'{"seq": 3, "op": "launch"}', r"line 3: unknown entry kind \(op\) 'launch'"),
]


def test_sync_refuses_a_damaged_journal_line_and_sends_nothing(
    store: str, tmp_path: Path, outage: dict, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    track(Tracker(store, check=False, output_dir=out), out, outage, stop_at=3)
    before = store_view(store)
    records = {r.name: r for r in list_records(out)}
    journal = records["popularity"].path / JOURNAL_FILE
    good = journal.read_bytes()
    lines = good.split(b"\n")
    outage["down"] = False
    capsys.readouterr()
    for damage, expect in DAMAGED:
        journal.write_bytes(b"\n".join([*lines[:2], damage, *lines[3:]]))
        assert cli.main(["sync", str(out)]) == 2, damage
        captured = capsys.readouterr()
        err = captured.err
        assert err.startswith(f"recvae: error: {journal}, line 3: ") and err.count("\n") == 1, err
        assert re.search(expect, err), (expect, err)
        assert "expected one JSON journal entry per line" in err and "Traceback" not in err
        assert captured.out == ""
        assert store_view(store) == before  # nothing sent, no run created, the marker untouched
    journal.write_bytes(good)
    assert cli.main(["sync", str(out)]) == 0
    assert {r["status"] for r in store_view(store).values()} == {"FINISHED"}


def test_sync_warns_of_a_last_line_cut_short_and_sends_the_rest(
    store: str, tmp_path: Path, outage: dict, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    track(Tracker(store, check=False, output_dir=out), out, outage, stop_at=3)
    journal = next(r for r in list_records(out) if r.name == "ease").path / JOURNAL_FILE
    with journal.open("ab") as f:
        f.write(b'{"seq": 999, "op": "metrics", "metr')  # a kill while writing the last entry
    n = len(journal.read_bytes().split(b"\n"))
    outage["down"] = False
    capsys.readouterr()
    assert cli.main(["sync", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.err == (f"recvae: warning: {journal}, line {n}: cut short (its process was killed "
                            "while writing it); that entry is skipped\n")
    assert "3 run(s) synced" in captured.out
    view = store_view(store)
    assert view["ease"]["status"] == "FINISHED" and "test/ndcg_at_2" in view["ease"]["metrics"]


def test_a_sync_that_stops_half_way_leaves_the_run_marked_incomplete(
    store: str, tmp_path: Path, outage: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    track(Tracker(store, check=False, output_dir=out), out, outage, stop_at=3)
    outage["down"] = False
    real = StoreWriter._metrics

    def metrics_fail(self, run_id, points):  # noqa: ANN001, ANN202
        if list(points):  # the store goes away after the run's tags and params went in
            raise MlflowException("API request failed: [Errno 111] Connection refused")

    monkeypatch.setattr(StoreWriter, "_metrics", metrics_fail)
    report = sync_output(out)
    assert (report.synced, report.failed) == (1, 1), report.lines  # p synced; popularity failed
    tags = store_view(store)["popularity"]["tags"]
    assert tags["recvae.offline"] == "true"
    assert "`recvae sync` has not completed it" in tags["mlflow.note.content"]
    assert f"`recvae sync {out.resolve()}` completes it" in tags["mlflow.note.content"]
    monkeypatch.setattr(StoreWriter, "_metrics", real)
    report = sync_output(out)
    assert report.failed == 0, report.lines
    view = store_view(store)
    assert all("recvae.offline" not in r["tags"] for r in view.values())
    assert view["popularity"]["tags"]["mlflow.note.content"] == "recvae model popularity"


def test_a_dataset_logged_by_two_workers_at_once_is_linked_not_lost(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MLflow's SQL store inserts a new dataset after looking it up, without a lock: over
    PostgreSQL the slower of two workers fails on the key (tests/search/test_search_postgres.py
    meets it for real). That one refusal is retried; any other error is not."""
    from mlflow.tracking import MlflowClient

    real, calls = MlflowClient.log_inputs, []

    def race_once(self, run_id, datasets=None, models=None):  # noqa: ANN001, ANN202
        calls.append(run_id)
        if len(calls) == 1:
            raise MlflowException('BAD_REQUEST: (psycopg2.errors.UniqueViolation) duplicate key value '
                                  'violates unique constraint "dataset_pk"')
        return real(self, run_id, datasets=datasets, models=models)

    monkeypatch.setattr(MlflowClient, "log_inputs", race_once)
    tracker = Tracker(store, check=False, output_dir=tmp_path)
    with tracker.start_pipeline("p", dataset=tiny_dataset()):
        pass
    assert tracker.guard.online and len(calls) == 2
    assert store_view(store)["p"]["status"] == "FINISHED"

    def refuse(self, run_id, datasets=None, models=None):  # noqa: ANN001, ANN202
        raise MlflowException("BAD_REQUEST: dataset name too long")

    monkeypatch.setattr(MlflowClient, "log_inputs", refuse)
    tracker = Tracker(store, check=False, output_dir=tmp_path / "other")
    with tracker.start_pipeline("q", dataset=tiny_dataset()):
        pass
    assert tracker.offline and "dataset name too long" in tracker.guard.error
