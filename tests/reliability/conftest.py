"""Fixtures of the reliability suite: one tiny dataset and saved models, built once per session,
copied into each test that damages them; small file systems (full, read-only) where the machine
lets a test mount them."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from recvae.cli import main
from tests.conftest import make_ratings

REPO = Path(__file__).parents[2]
# A model that trains in a second: tiny layers, two epochs.
TINY_VAE = ["--set", "hidden_dims=[16]", "--set", "latent_dim=8", "--set", "batch_size=50",
            "--epochs", "2"]


def write_ratings(path: Path, n_users: int = 150, seed: int = 3) -> Path:
    """A MovieLens ``ratings.csv`` (header userId,movieId,rating,timestamp) of ~60 kept users."""
    df = make_ratings(n_users=n_users, n_items=60, seed=seed, shuffle=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.rename(columns={"user": "userId", "item": "movieId", "value": "rating"}).to_csv(
        path, index=False
    )
    return path


def cli(*args: object) -> int:
    """``recvae ARGS`` in this process; the exit status."""
    return main([str(a) for a in args])


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A good ratings file, dataset and saved models (mult-vae, ease, popularity); read only."""
    root = tmp_path_factory.mktemp("built")
    ratings = write_ratings(root / "ratings.csv")
    paths = {"ratings": ratings, "dataset": root / "ds"}
    assert cli("ingest", "--source", "movielens", "--path", ratings, "--out", paths["dataset"],
               "--n-heldout-users", "10") == 0
    for model, extra in (("mult-vae", TINY_VAE), ("ease", ["--set", "l2=10"]), ("popularity", [])):
        paths[model] = root / model
        assert cli("train", "--data", paths["dataset"], "--model", model, "--out", paths[model],
                   "--no-track", "--quiet", *extra) == 0
    return paths


def copy_of(src: Path, dest: Path) -> Path:
    """A private copy of a built file or folder, to damage."""
    if src.is_dir():
        shutil.copytree(src, dest)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
    return dest


def entries(root: Path) -> set[str]:
    """Every path under ``root`` (hidden ones too), relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


def temporaries(root: Path) -> list[Path]:
    """Hidden ``.NAME.tmp-*`` / ``.NAME.old-*`` entries anywhere under ``root``."""
    return [p for p in root.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name]


# ------------------------------------------------------------------ small file systems
def _mount(target: Path, options: str) -> str | None:
    """Mount a tmpfs at ``target``; None when done, else why it cannot be (the skip reason)."""
    if sys.platform != "linux":
        return f"tmpfs mounts need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root (CI runs as root)"
    if shutil.which("mount") is None:
        return "no mount command on this machine"
    target.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode})"
    return None


@contextlib.contextmanager
def tmpfs(target: Path, options: str) -> Iterator[Path]:
    """A tmpfs at ``target`` for the block (skips the test, printing why, when not possible)."""
    reason = _mount(target, options)
    if reason is not None:
        print(f"skipped: {reason}")
        pytest.skip(reason)
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB file system: any real output fills it."""
    with tmpfs(tmp_path / "full", "size=64k,mode=0755") as mount:
        yield mount


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder nothing can be written in: a read-only tmpfs as root (root ignores permission
    bits), else a folder without write permission."""
    target = tmp_path / "read-only"
    if os.geteuid() != 0:
        target.mkdir()
        target.chmod(0o555)
        try:
            yield target
        finally:
            target.chmod(0o755)
        return
    with tmpfs(target, "ro,size=64k") as mount:
        yield mount
