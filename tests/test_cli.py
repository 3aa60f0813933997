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
    assert re.search(r"^users\s+603$", stdout, re.M)
    assert re.search(r"^validation_users\s+60$", stdout, re.M)  # default: 10 % of 603
    assert re.search(r"^train_interactions\s+[\d,]+$", stdout, re.M)

    code, table, _ = run_cli(capsys, "evaluate-split", out)
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
    assert_user_error(*res, "--threshold 'high': expected a number")
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
