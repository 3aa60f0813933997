"""recvae/models/memory.py: MemAvailable and cgroup (v1, v2) limits, read from fake trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from recvae.errors import RecvaeError
from recvae.models import memory

GB = 10**9


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def cgroup_v2(root: Path, levels: dict[str, tuple[str, int, int]]) -> None:
    """``levels``: cgroup path → (memory.max, memory.current, inactive_file)."""
    for path, (limit, current, inactive) in levels.items():
        here = root / path.lstrip("/")
        write(here / "memory.max", f"{limit}\n")
        write(here / "memory.current", f"{current}\n")
        write(here / "memory.stat", f"anon 1\ninactive_file {inactive}\nactive_file 5\n")


def test_v2_takes_the_tightest_level_and_counts_inactive_file_as_free(tmp_path):
    root = tmp_path / "cgroup"
    cgroup_v2(root, {
        "/": ("max", 50 * GB, 0),
        "/batch": (str(10 * GB), 7 * GB, 2 * GB),  # 10 − (7 − 2) = 5 GB
        "/batch/job": ("max", 3 * GB, 0),
    })
    proc = tmp_path / "cgroup.txt"
    write(proc, "0::/batch/job\n")
    assert memory._cgroup_headroom(proc, root) == 5 * GB
    write(root / "batch/job/memory.max", f"{4 * GB}\n")  # 4 − 3 = 1 GB binds now
    assert memory._cgroup_headroom(proc, root) == 1 * GB


def test_v2_inside_a_cgroup_namespace(tmp_path):
    # the container sees its own cgroup as "/" mounted at the root
    root = tmp_path / "cgroup"
    cgroup_v2(root, {"/": (str(8 * GB), 6 * GB, 1 * GB)})
    proc = tmp_path / "cgroup.txt"
    write(proc, "0::/\n")
    assert memory._cgroup_headroom(proc, root) == 3 * GB
    write(proc, "0::/some/path/not/mounted/here\n")
    assert memory._cgroup_headroom(proc, root) == 3 * GB


def test_v1_memory_controller(tmp_path):
    root = tmp_path / "cgroup"
    job = root / "memory" / "docker" / "abc"
    write(job / "memory.limit_in_bytes", f"{6 * GB}\n")
    write(job / "memory.usage_in_bytes", f"{4 * GB}\n")
    write(job / "memory.stat", f"cache 9\ntotal_inactive_file {GB}\n")
    write(root / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")  # no limit
    write(root / "memory" / "memory.usage_in_bytes", f"{20 * GB}\n")
    proc = tmp_path / "cgroup.txt"
    write(proc, "12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n")
    assert memory._cgroup_headroom(proc, root) == 3 * GB


def test_no_limits_anywhere(tmp_path):
    root = tmp_path / "cgroup"
    cgroup_v2(root, {"/": ("max", GB, 0)})
    proc = tmp_path / "cgroup.txt"
    write(proc, "0::/\n")
    assert memory._cgroup_headroom(proc, root) is None
    assert memory._cgroup_headroom(tmp_path / "missing", root) is None


def test_mem_available(tmp_path):
    meminfo = tmp_path / "meminfo"
    write(meminfo, "MemTotal:       24683584 kB\nMemFree: 1 kB\nMemAvailable:   23852436 kB\n")
    assert memory._mem_available(meminfo) == 23852436 * 1024
    write(meminfo, "MemTotal: 1 kB\n")
    assert memory._mem_available(meminfo) is None


def test_available_is_the_smaller_of_the_two(monkeypatch):
    monkeypatch.setattr(memory, "_mem_available", lambda: 20 * GB)
    monkeypatch.setattr(memory, "_cgroup_headroom", lambda: 6 * GB)
    assert memory.available_bytes() == 6 * GB
    monkeypatch.setattr(memory, "_cgroup_headroom", lambda: None)
    assert memory.available_bytes() == 20 * GB
    monkeypatch.setattr(memory, "_mem_available", lambda: None)
    assert memory.available_bytes() is None


def test_on_this_machine_something_is_available():
    available = memory.available_bytes()
    assert available is None or available > 0


def test_check_fits(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: 2 * GB)
    memory.check_fits("ease", 2 * GB, "x", "y")
    with pytest.raises(RecvaeError) as info:
        memory.check_fits("ease", 13_400_000_000, "a dense matrix", "use mult-vae")
    assert str(info.value) == (
        "ease: needs ≈ 13.4 GB of memory (a dense matrix), but only 2.0 GB is available "
        "(MemAvailable and cgroup limits); use mult-vae"
    )


@pytest.mark.parametrize(
    "n, text", [(999, "999 B"), (1500, "1.5 kB"), (6.7e9, "6.7 GB"), (4.2e15, "4200.0 TB")]
)
def test_format_bytes(n, text):
    assert memory.format_bytes(n) == text
