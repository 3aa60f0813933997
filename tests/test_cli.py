"""Tests for recvae.cli: ingest / evaluate-split / run --dry-run, and one-line user errors.

Commands run in-process through ``recvae.cli.main``; one test runs the installed ``recvae``
console script in a subprocess to prove the entry point works.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from recvae.cli import main
from recvae.errors import RecvaeError

REPO = Path(__file__).parents[1]
QUICKSTART = REPO / "pipelines" / "quickstart.yaml"


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, out: str, err: str, *patterns: str) -> str:
    """Exit status 2, one line 'recvae: error: ...' on stderr, no traceback, nothing on stdout."""
    assert code == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("recvae: error:")]
    assert len(lines) == 1, err
    assert out == ""
    for p in patterns:
        assert re.search(p, lines[0]), f"{p!r} not in {lines[0]!r}"
    return lines[0]


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """The --out of a command; its parent must not exist afterwards when the command fails."""
    return tmp_path / "outputs" / "ds"


def nothing_written(out: Path) -> bool:
    return not out.parent.exists()


# ------------------------------------------------------------------ happy paths
def test_console_script_ingest(ml_small_zip: Path, tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("recvae")
    assert script.is_file(), f"console script not installed at {script}"
    target = tmp_path / "ds"
    proc = subprocess.run(
        [str(script), "ingest", "--source", "movielens", "--path", str(ml_small_zip),
         "--out", str(target), "--n-heldout-users", "60", "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    first, _, rest = proc.stdout.partition("\n")
    assert first == f"wrote {target}"
    counts = json.loads(rest)
    assert counts["users"] == 603 and counts["test_users"] == 60 and counts["protocol"] == "strong"
    assert (target / "manifest.json").is_file()


def test_ingest_evaluate_split_and_reuse(
    ml_small_zip: Path, out: Path, capsys: pytest.CaptureFixture
) -> None:
    code, stdout, _ = run_cli(capsys, "ingest", "--source", "movielens", "--path", ml_small_zip,
                              "--out", out)
    assert code == 0
    assert stdout.splitlines()[0] == f"wrote {out}"
    # what preprocessing and the split dropped, where the user looks
    assert stdout.splitlines()[1] == ("dropped 52,256 interactions (51.8 %) with a value not above "
                                      "preprocess.threshold (3.5)")
    assert re.search(r"^dropped [\d,]+ interactions \([\d.]+ %\) of users with fewer than "
                     r"preprocess\.min_user_items = 5 items$", stdout, re.M)
    assert re.search(r"^users\s+603$", stdout, re.M)
    assert re.search(r"^validation_users\s+60$", stdout, re.M)  # default: 10 % of 603
    assert re.search(r"^train_interactions\s+[\d,]+$", stdout, re.M)

    code, table, _ = run_cli(capsys, "evaluate-split", out, "--verify")
    assert code == 0
    assert table.splitlines()[0].startswith(f"{out}: ml-latest-small (movielens)")
    for row in ("protocol", "users", "items", "train_users", "test_users_with_targets",
                "test_holdout_interactions", "interactions", "density"):
        assert re.search(rf"^{row}\s+\S+$", table, re.M), row
    assert table.splitlines()[1:] == stdout.splitlines()[1:]  # same counts as at ingest

    code, again, _ = run_cli(capsys, "ingest", "--source", "movielens", "--path", ml_small_zip,
                             "--out", out)
    assert code == 0 and again.splitlines()[0] == f"reused {out}"

    code, as_json, _ = run_cli(capsys, "summary", out, "--json")
    assert code == 0 and json.loads(as_json)["users"] == 603


def test_allow_negative(tmp_path: Path, out: Path, capsys: pytest.CaptureFixture) -> None:
    log = tmp_path / "events.csv"
    log.write_text("user,item,score\n" + "".join(
        f"{u},{i},{-1 if (u + i) % 4 == 0 else 1}\n" for u in range(40) for i in range(10)))
    args = ["ingest", "--source", "table", "--path", log, "--out", out, "--option", "value_col=score",
            "--threshold", "none", "--n-heldout-users", "4"]
    assert_user_error(*run_cli(capsys, *args), r"events\.csv: 100 interaction\(s\) with a negative "
                      r"value \(first: user 0, item 0, value -1\)", "--allow-negative")
    assert nothing_written(out)
    code, stdout, _ = run_cli(capsys, *args, "--allow-negative", "--json")
    assert code == 0 and json.loads(stdout.partition("\n")[2])["interactions"] == 400


def test_ingest_from_config_with_overrides(ml_small_zip: Path, out: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    code, stdout, _ = run_cli(capsys, "ingest", "--config", QUICKSTART, "--path", ml_small_zip,
                              "--out", out, "--set", "data.split.n_heldout_users=50", "--json")
    assert code == 0, stdout
    counts = json.loads(stdout.partition("\n")[2])
    assert counts["validation_users"] == counts["test_users"] == 50


def test_run_dry_run(capsys: pytest.CaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # another folder: the file's paths are relative to the file
    code, stdout, _ = run_cli(capsys, "run", QUICKSTART, "--dry-run")
    assert code == 0
    assert f"valid; data {REPO.resolve() / 'data' / 'ml-latest-small.zip'}; dataset ml-latest-small" in stdout
    assert f"outputs {REPO.resolve() / 'runs' / 'quickstart'};" in stdout
    assert "models: mult-vae, mult-dae, ease, als, bpr, item-knn, popularity" in stdout
    code, stdout, _ = run_cli(capsys, "run", QUICKSTART, "--dry-run", "--models", "ease,popularity")
    assert code == 0 and stdout.rstrip().endswith("models: ease, popularity")
    assert list(tmp_path.iterdir()) == []  # a dry run writes nothing


def test_dry_run_checks_models_inputs_and_parameters(
    capsys: pytest.CaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    res = run_cli(capsys, "run", QUICKSTART, "--dry-run", "--models", "ease,mult-gan")
    assert_user_error(*res, "--models: 'mult-gan' is not in", r"quickstart\.yaml", "expected one of mult-vae")
    # --set paths are the user's typing: relative to the working directory
    res = run_cli(capsys, "run", QUICKSTART, "--dry-run", "--set", "data.path=nope.zip")
    assert_user_error(*res, r"quickstart\.yaml: data\.path: nope\.zip: no such file or folder")
    moved = tmp_path / "elsewhere" / "q.yaml"  # the same file in another folder: its data is not there
    moved.parent.mkdir()
    moved.write_text(QUICKSTART.read_text())
    res = run_cli(capsys, "run", moved, "--dry-run")
    assert_user_error(*res, rf"q\.yaml: data\.path: {tmp_path / 'data' / 'ml-latest-small.zip'}: no such")
    res = run_cli(capsys, "run", QUICKSTART, "--dry-run", "--set", "models=[{model: ease, params: {l2: -1}}]")
    assert_user_error(*res, r"models\[0\]\.params", "l2")
    res = run_cli(capsys, "run", QUICKSTART, "--dry-run", "--set", "recommend.exclude=seen")
    assert_user_error(*res, "recommend.exclude: expected all, train or none")
    assert [p.name for p in tmp_path.iterdir()] == ["elsewhere"]


def test_help_shows_defaults_and_every_flag_is_explained(capsys: pytest.CaptureFixture) -> None:
    from recvae.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse has no API
    for name, sub in commands.items():
        for action in sub._actions:  # noqa: SLF001
            assert action.help, f"recvae {name} {action.option_strings or action.dest}: no help"
    with pytest.raises(SystemExit) as exit_:
        main(["recommend", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "items per user (default: 100)" in text
    assert "(default: all)" in text and "(default: popularity)" in text
    assert "(default: None)" not in text and "(default: False)" not in text
    with pytest.raises(SystemExit):
        main(["--version"])
    from recvae import __version__

    assert capsys.readouterr().out.strip() == f"recvae {__version__}"


# ------------------------------------------------------------------ ingest errors
def test_missing_file(tmp_path: Path, out: Path, capsys: pytest.CaptureFixture) -> None:
    res = run_cli(capsys, "ingest", "--source", "movielens", "--path", tmp_path / "nope.zip", "--out", out)
    assert_user_error(*res, r"nope\.zip", "no such file", "expected")
    assert nothing_written(out)


def test_unknown_source(ml_small_zip: Path, out: Path, capsys: pytest.CaptureFixture) -> None:
    res = run_cli(capsys, "ingest", "--source", "movielenz", "--path", ml_small_zip, "--out", out)
    assert_user_error(*res, "'movielenz'", "expected one of movielens, netflix")
    assert nothing_written(out)


def test_table_with_misnamed_columns(tmp_path: Path, out: Path, capsys: pytest.CaptureFixture) -> None:
    table = tmp_path / "events.csv"
    table.write_text("customer,sku,qty\n1,a,2\n2,b,1\n")
    res = run_cli(capsys, "ingest", "--source", "table", "--path", table, "--out", out,
                  "--option", "user_col=customer_id", "--option", "item_col=sku")
    assert_user_error(*res, r"events\.csv", "'customer_id'", "customer")
    assert nothing_written(out)


def test_non_numeric_rating_names_the_line(tmp_path: Path, out: Path, capsys: pytest.CaptureFixture) -> None:
    ratings = tmp_path / "ratings.csv"
    rows = [f"1,{i},4.0,100{i}" for i in range(1, 6)] + ["2,1,four,1007", "2,2,5.0,1008"]
    ratings.write_text("userId,movieId,rating,timestamp\n" + "\n".join(rows) + "\n")
    assert ratings.read_text().splitlines()[6].startswith("2,1,four")  # line 7 of the file
    res = run_cli(capsys, "ingest", "--source", "movielens", "--path", ratings, "--out", out)
    assert_user_error(*res, r"ratings\.csv, line 7", "'rating'", "expected a number", "'four'")
    assert nothing_written(out)


def test_empty_after_filtering(ml_small_zip: Path, out: Path, capsys: pytest.CaptureFixture) -> None:
    res = run_cli(capsys, "ingest", "--source", "movielens", "--path", ml_small_zip, "--out", out,
                  "--threshold", "10")
    assert_user_error(*res, r"ml-latest-small\.zip", "no interactions left", "threshold=10",
                      "min_user_items=5")
    assert nothing_written(out)


def test_too_few_users_for_the_heldout_counts(ml_small_zip: Path, out: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    res = run_cli(capsys, "ingest", "--source", "movielens", "--path", ml_small_zip, "--out", out,
                  "--n-heldout-users", "1000")
    assert_user_error(*res, "2000 users", "603", "n_heldout_users")
    assert nothing_written(out)


def test_truncated_zip(ml_small_zip: Path, tmp_path: Path, out: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "ml-latest-small.zip"
    bad.write_bytes(ml_small_zip.read_bytes()[:200_000])
    res = run_cli(capsys, "ingest", "--source", "movielens", "--path", bad, "--out", out)
    assert_user_error(*res, r"ml-latest-small\.zip", "zip")
    assert nothing_written(out)


def test_corrupt_zip_member(ml_small_zip: Path, tmp_path: Path, out: Path,
                            capsys: pytest.CaptureFixture) -> None:
    data = bytearray(ml_small_zip.read_bytes())
    with zipfile.ZipFile(ml_small_zip) as zf:
        info = zf.getinfo("ml-latest-small/ratings.csv")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 1000
    data[start : start + 2000] = bytes(2000)  # damage the compressed ratings
    bad = tmp_path / "ml.zip"
    bad.write_bytes(bytes(data))
    res = run_cli(capsys, "ingest", "--source", "movielens", "--path", bad, "--out", out)
    assert_user_error(*res, r"ml\.zip", "corrupt zip", "ratings.csv")
    assert nothing_written(out)


def test_ingest_argument_errors(ml_small_zip: Path, out: Path, capsys: pytest.CaptureFixture) -> None:
    res = run_cli(capsys, "ingest", "--source", "movielens", "--out", out)
    assert_user_error(*res, "--source and --path")
    res = run_cli(capsys, "ingest", "--source", "movielens", "--path", ml_small_zip, "--out", out,
                  "--threshold", "high")
    assert_user_error(*res, r"ingest: argument --threshold: expected a number.*got 'high'")
    res = run_cli(capsys, "ingest", "--source", "table", "--path", ml_small_zip, "--out", out,
                  "--option", "user_col")
    assert_user_error(*res, "--option 'user_col': expected KEY=VALUE")
    assert nothing_written(out)


def test_debug_shows_the_exception(tmp_path: Path, out: Path) -> None:
    with pytest.raises(RecvaeError, match="nope.zip"):
        main(["--debug", "ingest", "--source", "movielens", "--path", str(tmp_path / "nope.zip"),
              "--out", str(out)])


def test_evaluate_split_on_a_non_dataset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert_user_error(*run_cli(capsys, "evaluate-split", tmp_path), "no manifest.json", "recvae ingest")


# ------------------------------------------------------------------ run errors
def test_run_invalid_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(QUICKSTART.read_text().replace("epochs: 60", "epochs: sixty", 1))
    assert_user_error(*run_cli(capsys, "run", bad), r"bad\.yaml", r"models\[0\]\.params", "epochs")
    assert_user_error(*run_cli(capsys, "run", bad, "--dry-run"), r"bad\.yaml")
    res = run_cli(capsys, "run", QUICKSTART, "--dry-run", "--set", "data.split.seed=abc")
    assert_user_error(*res, r"quickstart\.yaml", r"data\.split\.seed", "expected an integer")
    assert_user_error(*run_cli(capsys, "run", tmp_path / "missing.yaml"), "config file not found")
    assert [p.name for p in tmp_path.iterdir()] == ["bad.yaml"]


# ------------------------------------------------------------------ run ids, recommend, ui
def test_run_and_train_print_their_mlflow_runs(tmp_path: Path, capsys: pytest.CaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    code, out, err = run_cli(
        capsys, "run", QUICKSTART, "--quiet", "--models", "popularity",
        "--set", f"data.out={tmp_path / 'data'}", "--set", f"output_dir={tmp_path / 'runs'}",
        "--set", f"tracking.uri={uri}", "--set", "tracking.log_model=false",
    )
    assert code == 0, err
    assert f"MLflow store:    {uri}" in out
    runs = re.search(r"^MLflow runs: +pipeline (\w{32}); popularity (\w{32})$", out, re.M)
    assert runs, out
    client = MlflowClient(uri)
    child = client.get_run(runs[2])
    assert child.data.tags["mlflow.parentRunId"] == runs[1]
    page = f"#/experiments/{child.info.experiment_id}/runs/{runs[1]}"
    assert f"open it:         recvae ui --tracking-uri {uri}   then http://127.0.0.1:5000/{page}" in out

    code, out, err = run_cli(capsys, "train", "--data", tmp_path / "data", "--model", "popularity",
                             "--out", tmp_path / "model", "--tracking-uri", uri, "--quiet")
    assert code == 0, err
    run_id = re.search(r"^MLflow run: +(\w{32}) +\(store (.+)\)$", out, re.M)
    assert run_id and run_id[2] == uri, out
    assert client.get_run(run_id[1]).data.tags["recvae.model"] == "popularity"
    assert f"recvae recommend --run-id {run_id[1]} --data {tmp_path / 'data'}" in out
    assert "test metrics, 59 users" in out


def test_recommend_exclude_and_fallback_flags(tmp_path: Path, capsys: pytest.CaptureFixture,
                                              ml_small_zip: Path) -> None:
    import pandas as pd

    from recvae.data.dataset import Dataset

    data, model = tmp_path / "data", tmp_path / "model"
    assert main(["ingest", "--source", "movielens", "--path", str(ml_small_zip), "--out", str(data),
                 "--n-heldout-users", "60"]) == 0
    assert main(["train", "--data", str(data), "--model", "popularity", "--out", str(model),
                 "--no-track", "--quiet"]) == 0
    dropped = [str(u) for u in Dataset.load(data).dropped_user_ids[:2]]
    capsys.readouterr()
    users = ",".join(["1", *dropped])
    code, out, err = run_cli(capsys, "recommend", model, "--data", data, "--users", users, "--k", "10",
                             "--out", tmp_path / "r.csv")
    assert code == 0, err
    assert out.strip() == (f"wrote {tmp_path / 'r.csv'}: 3 users (1 from the model, 2 from the "
                           "popularity fallback), 30 rows")
    recs = pd.read_csv(tmp_path / "r.csv")
    assert recs.groupby("user_id")["source"].first().to_dict() == {
        1: "model", **{int(u): "fallback" for u in dropped}}
    res = run_cli(capsys, "recommend", model, "--data", data, "--users", users, "--fallback", "none",
                  "--out", tmp_path / "s.csv")
    assert_user_error(*res, rf"2 dropped by preprocessing \({dropped[0]}, {dropped[1]}\)",
                      "fallback is none")
    code, out, _ = run_cli(capsys, "recommend", model, "--data", data, "--users", "1", "--k", "10000",
                           "--exclude", "none", "--out", tmp_path / "n.csv")
    assert code == 0 and pd.read_csv(tmp_path / "n.csv")["item_id"].nunique() == Dataset.load(data).n_items
    assert not (tmp_path / "s.csv").exists()


def test_ui_serves_the_store_every_command_uses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    from recvae.cli import ui_store_uri
    from recvae.tracking import resolve_tracking_uri

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for arg in (None, "sqlite:////x/y.db"):
        assert ui_store_uri(arg) == resolve_tracking_uri(arg)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    for arg in (None, "sqlite:////x/y.db"):
        assert ui_store_uri(arg) == resolve_tracking_uri(arg)
    assert_user_error(*run_cli(capsys, "ui"), "http://127.0.0.1:1 is a server already")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    res = run_cli(capsys, "ui", "--tracking-uri", f"sqlite:///{tmp_path / 'no' / 'mlflow.db'}")
    assert_user_error(*res, "its directory does not exist")


@pytest.mark.slow
def test_ui_answers_with_only_the_server_and_stops_cleanly(tmp_path: Path) -> None:
    """`recvae ui` on a loopback port: GET / answers 200, two processes (MLflow's server command
    and one uvicorn worker; no job runners), and SIGTERM to the command stops them all."""
    import os
    import signal
    import socket
    import time
    import urllib.request

    from mlflow.tracking import MlflowClient

    from tests.helpers import process_tree, session_processes

    db = tmp_path / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()  # an existing store, as after a run
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "ui.log"
    with log.open("w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "recvae.cli", "ui", "--tracking-uri",
                                 f"sqlite:///{db}", "--port", str(port)],
                                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, status = time.monotonic() + 180, None  # generous: CI machines are shared
        while status is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
                    status = resp.status
            except OSError:
                time.sleep(0.5)
        assert status == 200, log.read_text()[-3000:]
        time.sleep(3)  # MLflow starts its job runners after the server: there must be none
        tree = process_tree(proc.pid)
        names = [Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")[:120] for p in tree]
        assert len(tree) == 2, names
        proc.send_signal(signal.SIGTERM)  # the command only: it stops what it started
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while session_processes(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert session_processes(proc.pid) == []
    finally:
        if session_processes(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
