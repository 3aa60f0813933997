"""A full disk during ingest, train and recommend: one line naming the output, exit 2, and the
file system left as it was (no partial output, no temporaries, no work folder).

The disk is a 16 KiB tmpfs mounted by the test (as root, as in CI); elsewhere the tests are
skipped and say why. ``capfd`` captures the file descriptors, so a message a C library writes
straight to stderr (Arrow, torch) would fail the test too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from recvae.cli import main
from tests.reliability.conftest import tmpfs
from tests.reliability.test_bad_inputs import assert_one_line_error


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """16 KiB: less than any dataset, model or top-k file below needs."""
    with tmpfs(tmp_path / "disk", "size=16k,mode=0755") as mount:
        yield mount


def run(capfd: pytest.CaptureFixture, *args: object) -> tuple[int, str, str]:
    capfd.readouterr()
    code = main([str(a) for a in args])
    out, err = capfd.readouterr()
    return code, out, err


NO_SPACE = r"cannot write.*no space left on the device"


def test_ingest_on_a_full_disk(built: dict[str, Path], tiny_disk: Path,
                               capfd: pytest.CaptureFixture) -> None:
    code, out, err = run(capfd, "ingest", "--source", "movielens", "--path", built["ratings"],
                         "--out", tiny_disk / "ds", "--n-heldout-users", "10")
    assert_one_line_error(code, out, err, (rf"disk/ds: {NO_SPACE}",))
    assert list(tiny_disk.iterdir()) == []


@pytest.mark.parametrize("model", ["mult-vae", "ease"])
def test_train_on_a_full_disk(model: str, built: dict[str, Path], tiny_disk: Path,
                              capfd: pytest.CaptureFixture) -> None:
    # mult-vae fails writing its first checkpoint (in the hidden folder beside --out); ease when
    # its model folder, --out itself, is saved
    code, _, err = run(capfd, "train", "--data", built["dataset"], "--model", model, "--out",
                       tiny_disk / "model", "--epochs" if model == "mult-vae" else "--quiet",
                       *(["1", "--quiet"] if model == "mult-vae" else []), "--no-track")
    where = r"\.model\.work/\S+" if model == "mult-vae" else "model"
    assert_one_line_error(code, "", err, (rf"disk/{where}: {NO_SPACE}",))
    assert list(tiny_disk.iterdir()) == []


@pytest.mark.parametrize("name", ["top.parquet", "top.csv", "top.csv.gz"])
def test_recommend_on_a_full_disk(name: str, built: dict[str, Path], tiny_disk: Path,
                                  capfd: pytest.CaptureFixture) -> None:
    code, out, err = run(capfd, "recommend", built["ease"], "--data", built["dataset"], "--out",
                         tiny_disk / name, "--k", "50", "--quiet")
    assert_one_line_error(code, out, err, (rf"disk/{name}: {NO_SPACE}",))
    assert list(tiny_disk.iterdir()) == []
