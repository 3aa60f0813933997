"""Tests for recvae.io: owner-named temporaries and their cleanup, write and read errors."""

from __future__ import annotations

import errno
import os
import pickle
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from recvae import io
from recvae.errors import RecvaeError
from recvae.io import (
    STALE_AFTER_SECONDS,
    atomic_dir,
    atomic_file,
    binary_sink,
    load_npy,
    load_npz,
    read_json,
    remove_stale,
    save_npy,
    sweep_stale,
    write_errors,
)


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


@pytest.fixture
def sleeper():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def leftover(parent: Path, name: str, pid: int, *, host: str = io._HOST, kind: str = "tmp",
             suffix: str = "", folder: bool = True) -> Path:
    entry = parent / f".{name}.{kind}-{host}-{pid}-0123abcd{suffix}"
    if folder:
        entry.mkdir(parents=True)
        (entry / "part.npy").write_bytes(b"x" * 100)
    else:
        entry.parent.mkdir(parents=True, exist_ok=True)
        entry.write_bytes(b"x")
    return entry


def age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


# ------------------------------------------------------------------ temporaries
def test_temporary_names_carry_host_and_pid(tmp_path: Path) -> None:
    with atomic_dir(tmp_path / "out") as tmp:
        assert re.fullmatch(rf"\.out\.tmp-{io._HOST}-{os.getpid()}-[0-9a-f]{{8}}", tmp.name)
        assert remove_stale(tmp_path / "out") == []  # our own, live: kept
        assert tmp.is_dir()
    with atomic_file(tmp_path / "recs.csv.gz") as tmp:
        assert tmp.name.startswith(f".recs.csv.gz.tmp-{io._HOST}-{os.getpid()}-")
        assert tmp.suffix == ".gz"  # libraries that read the suffix still see it
        tmp.write_bytes(b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "recs.csv.gz"]


def test_a_dead_owners_leftovers_are_removed_and_a_live_owners_kept(
    tmp_path: Path, sleeper: int
) -> None:
    dead = leftover(tmp_path, "ds", dead_pid())
    dead_old = leftover(tmp_path, "ds", dead_pid(), kind="old")
    live = leftover(tmp_path, "ds", sleeper)
    other_name = leftover(tmp_path, "other", dead_pid())
    work = tmp_path / ".ds.work"
    work.mkdir()
    (tmp_path / "ds").mkdir()  # the output is in place: a set-aside copy is just removed
    assert sorted(remove_stale(tmp_path / "ds")) == sorted([dead, dead_old])
    assert live.is_dir() and other_name.is_dir() and work.is_dir()


def test_our_own_pid_from_an_earlier_process_is_stale(tmp_path: Path) -> None:
    # a container's pid 1 comes back after a restart: the name alone cannot tell
    earlier = leftover(tmp_path, "ds", os.getpid())
    with atomic_dir(tmp_path / "ds") as tmp:  # cleans up before it starts
        assert not earlier.exists()
        (tmp / "f").write_text("new")
    assert (tmp_path / "ds" / "f").read_text() == "new"


def test_unknown_owners_wait_for_the_age_threshold(tmp_path: Path) -> None:
    foreign = leftover(tmp_path, "ds", 12345, host="otherhost_1a")
    legacy = tmp_path / ".ds.tmp-0123abcd"
    legacy.mkdir()
    legacy_file = tmp_path / ".recs.parquet.tmp-89abcdef.parquet"
    legacy_file.write_bytes(b"x")
    assert remove_stale(tmp_path / "ds") == [] and remove_stale(tmp_path / "recs.parquet") == []
    for p in (foreign, legacy, legacy_file):
        age(p, STALE_AFTER_SECONDS + 60)
    assert sorted(remove_stale(tmp_path / "ds")) == sorted([foreign, legacy])
    assert remove_stale(tmp_path / "recs.parquet") == [legacy_file]


def test_a_previous_output_set_aside_by_a_killed_process_is_put_back(tmp_path: Path) -> None:
    # killed between its two renames: the old output set aside, the new one not yet in place
    pid = dead_pid()
    old = leftover(tmp_path, "ds", pid, kind="old")
    new = leftover(tmp_path, "ds", pid)
    assert remove_stale(tmp_path / "ds") == [new]
    assert (tmp_path / "ds" / "part.npy").is_file() and not old.exists()


def test_output_names_with_glob_characters(tmp_path: Path) -> None:
    dead = leftover(tmp_path, "run[1]*", dead_pid())
    assert remove_stale(tmp_path / "run[1]*") == [dead]


def test_names_we_do_not_write_are_never_touched(tmp_path: Path) -> None:
    odd = tmp_path / ".ds.tmp-not-ours"
    odd.mkdir()
    age(odd, 10 * STALE_AFTER_SECONDS)
    assert remove_stale(tmp_path / "ds") == [] and odd.is_dir()


def test_atomic_writes_remove_stale_siblings(tmp_path: Path) -> None:
    pid = dead_pid()
    a = leftover(tmp_path, "model", pid)
    b = leftover(tmp_path, "top.parquet", pid, suffix=".parquet", folder=False)
    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "w").write_text("1")
    with atomic_file(tmp_path / "top.parquet") as tmp:
        tmp.write_text("2")
    assert not a.exists() and not b.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "top.parquet"]


def test_sweep_stale_walks_an_output_folder(tmp_path: Path, sleeper: int) -> None:
    pid = dead_pid()
    nested = leftover(tmp_path / "models", "mult-vae", pid)
    ckpt = leftover(tmp_path / "checkpoints" / "mult-vae", "checkpoint.pt", pid, suffix=".pt",
                    folder=False)
    live = leftover(tmp_path / "recommendations", "ease.parquet", sleeper, suffix=".parquet",
                    folder=False)
    assert sorted(sweep_stale(tmp_path)) == sorted([nested, ckpt])
    assert live.exists()


def test_replacing_keeps_the_old_output_until_the_new_one_is_in(tmp_path: Path) -> None:
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(ValueError), atomic_dir(tmp_path / "out") as tmp:
        (tmp / "v").write_text("2")
        raise ValueError("boom")
    assert (tmp_path / "out" / "v").read_text() == "1"
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "v").write_text("3")
    assert (tmp_path / "out" / "v").read_text() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ------------------------------------------------------------------ write errors
@pytest.mark.parametrize("code, words", [
    (errno.ENOSPC, "no space left on the device"), (errno.EROFS, "read-only file system"),
    (errno.EACCES, "permission denied"), (errno.EDQUOT, "disk quota exceeded"),
])
def test_write_errors_become_one_line(code: int, words: str, tmp_path: Path) -> None:
    with pytest.raises(RecvaeError, match=rf"^{re.escape(str(tmp_path))}/out: cannot write: {words}"):
        with write_errors(tmp_path / "out"):
            raise OSError(code, os.strerror(code))


def test_other_errors_pass_unchanged(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="Bad file descriptor"), write_errors(tmp_path):
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))
    with pytest.raises(KeyError), write_errors(tmp_path):
        raise KeyError("a bug stays a bug")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this system")
def test_binary_sink_keeps_the_errno_torch_and_numpy_hide() -> None:
    # /dev/full answers every write with ENOSPC; torch then raises "unexpected pos"
    with pytest.raises(OSError) as err, binary_sink("/dev/full") as f:
        torch.save({"w": torch.zeros(100_000)}, f)
    assert err.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as err:
        save_npy("/dev/full", np.zeros(100_000))
    assert err.value.errno == errno.ENOSPC


def test_atomic_file_on_a_full_disk_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RecvaeError, match=r"top\.csv: cannot write: no space left"):
        with atomic_file(tmp_path / "top.csv") as tmp:
            tmp.write_text("partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ read errors
def test_load_npy_refuses_pickles(tmp_path: Path) -> None:
    (tmp_path / "p.npy").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(RecvaeError, match=r"p\.npy: refused: it holds pickled Python objects"):
        load_npy(tmp_path / "p.npy")
    np.save(tmp_path / "o.npy", np.array([{}], dtype=object), allow_pickle=True)
    with pytest.raises(RecvaeError, match=r"o\.npy: refused"):
        load_npy(tmp_path / "o.npy")


def test_truncated_arrays_name_the_file(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.arange(1000))
    (tmp_path / "a.npy").write_bytes((tmp_path / "a.npy").read_bytes()[:300])
    with pytest.raises(RecvaeError, match=r"a\.npy: cannot read \(.+\); expected a numpy"):
        load_npy(tmp_path / "a.npy")
    (tmp_path / "m.npz").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(RecvaeError, match=r"m\.npz: cannot read .*expected a scipy sparse"):
        load_npz(tmp_path / "m.npz")
    with pytest.raises(RecvaeError, match=r"gone\.npy: no such file"):
        load_npy(tmp_path / "gone.npy")


def test_read_json(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("[1]")
    with pytest.raises(RecvaeError, match=r"a\.json: expected a JSON object, got a JSON list"):
        read_json(tmp_path / "a.json")
    (tmp_path / "b.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(RecvaeError, match=r"b\.json: invalid JSON"):
        read_json(tmp_path / "b.json")
