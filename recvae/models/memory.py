"""How much memory a fit may still allocate, and a one-line refusal when it would not fit.

Closed-form models (EASE, EDLAE) allocate one dense n_items² matrix: at a catalogue where that
cannot fit, refusing before the allocation, with the numbers, beats the kernel's OOM killer an
hour in (or a swap storm on a shared machine).

Availability is the smaller of the kernel's ``MemAvailable`` (free memory plus what it can
reclaim without swapping) and the headroom of every memory-limited cgroup above this process
(v2 ``memory.max``, v1 ``memory.limit_in_bytes``), as containers and batch schedulers enforce
those limits. A cgroup's reclaimable page cache (``inactive_file``) counts as available, as
in the kubelet's working-set accounting.

Example::

    check_fits("ease", need_bytes=7.2e9, what="the 41,981² float32 Gram matrix",
               hint="use an autoencoder (model: mult-vae)")
"""

from __future__ import annotations

from pathlib import Path

from recvae.errors import RecvaeError

CGROUP_ROOT = Path("/sys/fs/cgroup")
_UNLIMITED = 1 << 60  # cgroup v1 spells "no limit" as a page-rounded LONG_MAX


def available_bytes() -> int | None:
    """Bytes this process may still allocate without swapping or hitting a cgroup limit.

    None when nothing can be read (not Linux): the caller then cannot check.
    """
    candidates = [v for v in (_mem_available(), _cgroup_headroom()) if v is not None]
    return min(candidates) if candidates else None


def check_fits(model: str, need_bytes: int, what: str, hint: str) -> None:
    """Raise a one-line RecvaeError unless ``need_bytes`` fits in :func:`available_bytes`."""
    available = available_bytes()
    if available is None or need_bytes <= available:
        return
    raise RecvaeError(
        f"{model}: needs ≈ {format_bytes(need_bytes)} of memory ({what}), but only "
        f"{format_bytes(available)} is available (MemAvailable and cgroup limits); {hint}"
    )


def format_bytes(n: float) -> str:
    """``7.2 GB`` (decimal units, as memory is quoted in cloud instance specs)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _mem_available(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # reported in KiB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_headroom(
    proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = CGROUP_ROOT
) -> int | None:
    """The least ``limit − (usage − inactive_file)`` over this process's memory cgroup and its
    ancestors (a parent's limit binds its children too); None without any limit."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    headrooms = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # v2: one unified hierarchy
            mounts = [root, root / "unified"]
            files = ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):  # v1: the memory controller's own hierarchy
            mounts = [root / "memory"]
            files = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        else:
            continue
        for mount in mounts:
            headrooms += _headrooms(mount, path, *files)
    return min(headrooms) if headrooms else None


def _headrooms(mount: Path, path: str, limit_file: str, usage_file: str, stat_key: str) -> list[int]:
    # In a container with its own cgroup namespace the path is "/" and the mount is the
    # container's own cgroup; otherwise the path names our cgroup below the mount.
    here = mount / path.lstrip("/")
    if not here.is_dir():
        here = mount
    out = []
    while True:
        limit = _read_int(here / limit_file)
        if limit is not None and limit < _UNLIMITED:
            usage = _read_int(here / usage_file) or 0
            reclaimable = _stat(here / "memory.stat", stat_key) or 0
            out.append(max(limit - max(usage - reclaimable, 0), 0))
        if here == mount or here.parent == here:
            return out
        here = here.parent


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return None if text == "max" else int(text) if text.isdigit() else None


def _stat(path: Path, key: str) -> int | None:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        return None
    return None


__all__ = ["available_bytes", "check_fits", "format_bytes"]
