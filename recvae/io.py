"""Files in and out: atomic outputs, the temporaries a killed process leaves, and one-line errors.

- :func:`atomic_dir` / :func:`atomic_file`: outputs appear complete under their final name, or not
  at all. The temporary sibling's name carries its owner (host and pid), so the next run in the
  same place removes what a killed process left (:func:`remove_stale`), and never what a live
  one is writing.
- Writing: a full disk, a read-only or unwritable folder and the like become a
  :class:`~recvae.errors.RecvaeError` naming the path (:func:`write_errors`, applied by both
  context managers); :func:`binary_sink` keeps the real ``OSError`` where a library hides it.
- Reading: :func:`load_npy`, :func:`load_npz`, :func:`read_parquet_column` and
  :func:`read_json` turn a truncated, foreign or pickled file into one line naming the file and
  what was expected. Pickles are never loaded.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from recvae.errors import RecvaeError

log = logging.getLogger(__name__)

# ============================================================================ temporaries
#: A temporary whose owner cannot be checked (another host or pid namespace, or a name written
#: by an older recvae) is removed only once it is this old: a live writer touches its files far
#: more often than this.
STALE_AFTER_SECONDS = 24 * 3600


def _owner_host() -> str:
    """This host and pid namespace as one token of ``[A-Za-z0-9_]``: a pid means something
    only within its namespace, so two containers sharing a folder never judge each other's pids."""
    name = socket.gethostname()
    host = re.sub(r"[^A-Za-z0-9]", "_", name) or "host"
    if len(host) > 24:  # keep names short, and long host names (pods) distinct
        host = f"{host[:15]}_{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    try:
        ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:  # not Linux: the host name alone
        return host
    return f"{host}_{ns:x}"


_HOST = _owner_host()
# .NAME.tmp-HOST-PID-RAND[.SUFFIX] (SUFFIX: atomic_file keeps the final name's suffix)
_OWNED = re.compile(r"(?P<host>[A-Za-z0-9_]+)-(?P<pid>[0-9]+)-[0-9a-f]{8}(\.[^/]*)?")
_LEGACY = re.compile(r"[0-9a-f]{8}(\.[^/]*)?")  # before owners were recorded: .NAME.tmp-RAND
_ANY_TEMP = re.compile(r"\.(?P<name>.+?)\.(?:tmp|old)-.+")
# Names of the temporaries this process is writing now (names, not paths: one folder can be
# reached by several paths). A pid can come back (a container's pid 1 after a restart): an entry
# named with our own pid that is not in this set is a dead process's.
_LIVE: set[str] = set()


def _temp_path(final: Path, kind: str, suffix: str = "") -> Path:
    owner = f"{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return final.parent / f".{final.name}.{kind}-{owner}{suffix}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _owner_gone(entry: Path, rest: str, now: float) -> bool:
    """Whether the temporary ``entry`` (``rest``: its name after ``.tmp-``/``.old-``) is a dead
    process's. Unknown owners count as gone only after :data:`STALE_AFTER_SECONDS`."""
    m = _OWNED.fullmatch(rest)
    if m is not None and m["host"] == _HOST:
        pid = int(m["pid"])
        if pid == os.getpid():
            return entry.name not in _LIVE
        return not _pid_alive(pid)
    if m is None and not _LEGACY.fullmatch(rest):
        return False  # not a name we write
    try:
        age = now - entry.lstat().st_mtime
    except FileNotFoundError:
        return False
    return age > STALE_AFTER_SECONDS


def _remove(entry: Path) -> bool:
    try:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    except FileNotFoundError:  # another process cleaned it first
        return False
    except OSError as e:  # not ours to insist on: say so and go on
        log.warning("could not remove the stale temporary %s: %s", entry, e.strerror or e)
        return False
    return True


def remove_stale(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of the output ``path`` (``.NAME.tmp-*`` and ``.NAME.old-*`` beside
    it) whose owning process is gone; returns what was removed.

    An owner on this host (and pid namespace) is checked by its pid; any other owner only by age
    (:data:`STALE_AFTER_SECONDS`). Entries of live processes are never touched. A previous
    output set aside (``.old-``) by a process killed before its new output moved in is put back
    when ``path`` is missing, rather than removed.
    """
    final = Path(path)
    parent = final.parent
    if not parent.is_dir():
        return []
    removed = []
    now = time.time()
    for kind in ("old", "tmp"):
        prefix = f".{final.name}.{kind}-"
        for entry in sorted(parent.glob(f"{glob.escape(prefix)}*")):
            if not _owner_gone(entry, entry.name[len(prefix):], now):
                continue
            if kind == "old" and not final.exists():
                try:
                    os.replace(entry, final)
                except OSError as e:  # not ours to insist on: say so and go on
                    log.warning("could not restore %s from %s: %s", final, entry, e.strerror or e)
                else:
                    log.info("restored %s from %s, set aside by a process that is gone", final, entry)
            elif _remove(entry):
                log.info("removed %s, left by a process that is gone", entry)
                removed.append(entry)
    return removed


def sweep_stale(directory: str | os.PathLike, depth: int = 3) -> list[Path]:
    """:func:`remove_stale` for every output under ``directory`` (``depth`` levels of folders),
    e.g. a pipeline's ``output_dir`` at the start of a run."""
    root = Path(directory)
    if depth < 0 or not root.is_dir():
        return []
    removed, outputs = [], set()
    for entry in sorted(root.iterdir()):
        if m := _ANY_TEMP.fullmatch(entry.name):
            outputs.add(m["name"])
        elif entry.is_dir() and not entry.is_symlink():
            removed += sweep_stale(entry, depth - 1)
    for name in sorted(outputs):
        removed += remove_stale(root / name)
    return removed


# ============================================================================ writing
#: errno values that mean "this location cannot take the output", not a bug.
WRITE_ERRNOS = {
    errno.ENOSPC: "no space left on the device; free some space or write elsewhere",
    errno.EDQUOT: "disk quota exceeded; free some space or write elsewhere",
    errno.EFBIG: "file too large for this file system or limit; write elsewhere",
    errno.EROFS: "read-only file system; choose a writable output location",
    errno.EACCES: "permission denied; choose a writable output location",
    errno.EPERM: "operation not permitted; choose a writable output location",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "is a folder; expected a file name",
    errno.EEXIST: "a file is in the way of a folder",
    errno.ENAMETOOLONG: "file name too long; choose a shorter name",
}


@contextlib.contextmanager
def write_errors(target: str | os.PathLike) -> Iterator[None]:
    """Turn an ``OSError`` of :data:`WRITE_ERRNOS` raised while writing ``target`` into a
    RecvaeError naming the path and what to do; any other exception passes unchanged."""
    try:
        yield
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            raise
        detail = "" if _within(e.filename, Path(target)) else f" ({e.filename})"
        raise RecvaeError(f"{target}: cannot write{detail}: {WRITE_ERRNOS[e.errno]}") from None


def _within(filename: object, target: Path) -> bool:
    """Whether ``filename`` is ``target``, inside it, or one of its temporaries (or unknown):
    the error then needs no second path."""
    if not isinstance(filename, str | os.PathLike):
        return True
    path = Path(filename)
    prefixes = (f".{target.name}.tmp-", f".{target.name}.old-")
    return path == target or target in path.parents or any(
        part.startswith(prefixes) for part in path.parts
    )


def _make_parent(final: Path) -> None:
    with write_errors(final):
        final.parent.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces ``path`` when the block succeeds.

    On an exception the temporary directory is removed and ``path`` is left as it was. Stale
    temporaries of ``path`` left by killed processes are removed first; a full disk or an
    unwritable folder is a RecvaeError naming ``path``.
    """
    final = Path(path)
    _make_parent(final)
    remove_stale(final)
    tmp = _temp_path(final, "tmp")
    old = _temp_path(final, "old")  # where a previous output waits while the new one moves in
    _LIVE.update((tmp.name, old.name))
    try:
        with write_errors(final):
            tmp.mkdir()
            try:
                yield tmp
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            replacing = final.exists()
            if replacing:
                os.replace(final, old)
            try:
                os.replace(tmp, final)
            except OSError:
                if replacing:  # put the previous output back
                    os.replace(old, final)
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            if replacing:
                shutil.rmtree(old, ignore_errors=True)
    finally:
        _LIVE.difference_update((tmp.name, old.name))


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling file name that is renamed to ``path`` when the block succeeds.

    The temporary keeps ``path``'s last suffix (libraries that pick a format from it still
    do). As :func:`atomic_dir`: stale temporaries are removed first, write errors are one line.
    """
    final = Path(path)
    _make_parent(final)
    remove_stale(final)
    tmp = _temp_path(final, "tmp", final.suffix)
    _LIVE.add(tmp.name)
    try:
        with write_errors(final):
            try:
                yield tmp
                os.replace(tmp, final)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
    finally:
        _LIVE.discard(tmp.name)


class _Sink:
    """A buffered binary file that remembers the first ``OSError`` of a write."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as e:
            self.error = self.error or e
            raise


@contextlib.contextmanager
def binary_sink(path: str | os.PathLike) -> Iterator[Any]:
    """A file object for libraries that hide the real write error: torch raises a RuntimeError
    ("unexpected pos") on a full disk, numpy's ``tofile`` an ``OSError`` without errno. The
    error the file itself raised is re-raised instead, so :func:`write_errors` can word it.

    Example::

        with binary_sink(tmp / "weights.pt") as f:
            torch.save(state, f)
    """
    with open(path, "wb") as f:
        sink = _Sink(f)
        try:
            yield sink
        except Exception:
            if sink.error is not None:
                raise sink.error from None
            raise


def save_npy(path: str | os.PathLike, array: Any) -> None:
    """``np.save`` whose write errors keep their errno (see :func:`binary_sink`)."""
    import numpy as np

    with binary_sink(path) as f:
        np.save(f, array, allow_pickle=False)


def save_arrays(path: str | os.PathLike, arrays: dict[str, Any]) -> None:
    """Named numpy arrays in one uncompressed ``.npz`` (never pickled: object arrays are refused).
    A plain file object: zipfile needs to seek, and it keeps the errno of a failed write."""
    import numpy as np

    for name, array in arrays.items():
        if np.asarray(array).dtype.hasobject:
            raise RecvaeError(f"{path}: array {name!r} holds Python objects; expected numbers")
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ============================================================================ reading
_PICKLED = ("pickled", "allow_pickle")


def _unreadable(path: Path, e: BaseException, expected: str) -> RecvaeError:
    """The one-line error for a file that failed to parse (``e``: the library's exception)."""
    if isinstance(e, FileNotFoundError):
        return RecvaeError(f"{path}: no such file; expected {expected}")
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if any(word in text for word in _PICKLED):
        return RecvaeError(
            f"{path}: refused: it holds pickled Python objects, which recvae never loads; "
            f"expected {expected}"
        )
    if len(text) > 160:
        text = text[:160] + "..."
    return RecvaeError(f"{path}: cannot read ({text}); expected {expected}")


# What numpy, scipy and zipfile raise for a truncated, foreign or pickled file.
_ARRAY_ERRORS = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error)


def load_npy(path: str | os.PathLike, expected: str = "a numpy .npy array") -> Any:
    """``np.load`` of one array, never unpickling; a bad file is a RecvaeError naming it."""
    import numpy as np

    p = Path(path)
    try:
        return np.load(p, allow_pickle=False)
    except _ARRAY_ERRORS as e:
        raise _unreadable(p, e, expected) from None


def load_arrays(path: str | os.PathLike, expected: str = "named numpy arrays (.npz)") -> dict[str, Any]:
    """Every array of an ``.npz`` written by :func:`save_arrays`, never unpickling; a bad file
    (truncated, foreign, holding pickled objects) is a RecvaeError naming it."""
    import numpy as np

    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise ValueError("a single .npy array, not an .npz archive")
            return {name: npz[name] for name in npz.files}
    except _ARRAY_ERRORS as e:
        raise _unreadable(p, e, expected) from None


def load_npz(path: str | os.PathLike, expected: str = "a scipy sparse .npz matrix") -> Any:
    """``scipy.sparse.load_npz`` as CSR, never unpickling; a bad file is a RecvaeError naming it."""
    import scipy.sparse as sp

    p = Path(path)
    try:
        return sp.load_npz(p).tocsr()
    except _ARRAY_ERRORS as e:
        raise _unreadable(p, e, expected) from None


def read_parquet_column(path: str | os.PathLike, column: str) -> Any:
    """One column of a Parquet file as a numpy array (the id maps); a RecvaeError naming the
    file when it is unreadable or lacks the column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = Path(path)
    expected = f"a Parquet file with a column {column!r}"
    try:
        table = pq.read_table(p)
    except (OSError, pa.ArrowException) as e:
        raise _unreadable(p, e, expected) from None
    if column not in table.column_names:
        raise RecvaeError(f"{p}: no column {column!r}; columns found: {table.column_names}")
    return table.column(column).to_pandas().to_numpy()


def read_json(path: str | os.PathLike, expected: str = "a JSON object") -> dict[str, Any]:
    """A JSON object from ``path``; a RecvaeError naming the file when it is not one."""
    p = Path(path)
    try:
        value = json.loads(p.read_bytes())
    except OSError as e:
        raise _unreadable(p, e, expected) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecvaeError(f"{p}: invalid JSON ({e}); expected {expected}") from None
    if not isinstance(value, dict):
        raise RecvaeError(f"{p}: expected {expected}, got a JSON {type(value).__name__}")
    return value
