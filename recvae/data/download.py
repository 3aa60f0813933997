"""Download the official MovieLens zips, verified against GroupLens's published MD5 checksums.

Example::

    path = download_movielens("ml-20m")          # data/raw/ml-20m.zip, checked, cached
    ratings = read_movielens(path)
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from recvae.errors import RecvaeError
from recvae.io import atomic_file

log = logging.getLogger(__name__)

MOVIELENS_BASE_URL = "https://files.grouplens.org/datasets/movielens/"

# MD5 of each official zip, as GroupLens publishes it beside the zip ({name}.zip.md5), and as
# other projects pin it (values cross-checked in public code that verifies these downloads).
# ml-latest is rebuilt by GroupLens from time to time, so its checksum is fetched from
# {url}.md5 at download time and kept next to the zip ({name}.zip.md5) for later cache checks.
MOVIELENS_MD5: dict[str, str | None] = {
    "ml-100k": "0e33842e24a9c977be4e0107933c0723",
    "ml-1m": "c4d9eecfca2ab87c1945afe126590906",
    "ml-10m": "ce571fd55effeba0271552578f2648bd",
    "ml-20m": "cd245b17a1ae2cc31bb14903e1204af3",
    "ml-25m": "6b51fb2759a8657d3bfcbfc42b592ada",
    "ml-32m": "d472be332d4daa821edc399621853b57",
    "ml-latest-small": "31a303aabbc519bd33d025e44d6c2570",  # the 2018-09-26 release
    "ml-latest": None,
}
MOVIELENS_NAMES: tuple[str, ...] = tuple(MOVIELENS_MD5)

_TIMEOUT_S = 60
_MD5 = re.compile(r"\b([0-9a-fA-F]{32})\b")


def download_movielens(
    name: str,
    cache_dir: str | os.PathLike = "data/raw",
    *,
    base_url: str = MOVIELENS_BASE_URL,
    show_progress: bool = True,
) -> Path:
    """Return ``cache_dir/{name}.zip``, downloading it from ``{base_url}{name}.zip`` if needed.

    ``name`` is one of :data:`MOVIELENS_NAMES`. A cached zip whose MD5 matches the published
    checksum is returned without touching the network. A download is written under a temporary
    name and renamed only once its checksum matches; a mismatch deletes it and raises.

    Example::

        zip_path = download_movielens("ml-1m", "data/raw")
    """
    if name not in MOVIELENS_MD5:
        raise RecvaeError(
            f"unknown MovieLens dataset {name!r}: expected one of {', '.join(MOVIELENS_NAMES)}"
        )
    url = f"{base_url.rstrip('/')}/{name}.zip"
    dest = Path(cache_dir) / f"{name}.zip"
    sidecar = dest.with_name(dest.name + ".md5")
    expected = MOVIELENS_MD5[name] or _read_md5_file(sidecar)

    if dest.is_file() and expected is not None:
        got = md5_file(dest)
        if got == expected:
            return dest
        log.warning("%s has MD5 %s, expected %s: downloading it again", dest, got, expected)
    if expected is None:
        expected = _published_md5(f"{url}.md5", dest)
        if dest.is_file() and md5_file(dest) == expected:
            _write_md5_file(sidecar, expected, dest.name)
            return dest

    _fetch(url, dest, expected, show_progress=show_progress)
    if MOVIELENS_MD5[name] is None:
        _write_md5_file(sidecar, expected, dest.name)
    return dest


def md5_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex MD5 of a file's bytes (the checksum GroupLens publishes)."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _open(url: str, dest: Path, expected: str | None):
    """urlopen with errors turned into one-line RecvaeErrors that say what to do."""
    try:
        return urllib.request.urlopen(url, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as e:
        raise RecvaeError(
            f"{url}: the server answered HTTP {e.code} {e.reason}; check the dataset name and "
            f"base_url, or place the file at {dest} by hand"
        ) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        checksum = f" (MD5 {expected})" if expected else f" with its checksum file at {dest}.md5"
        raise RecvaeError(
            f"cannot reach {url} ({reason}): this machine seems offline; download the file "
            f"elsewhere and place it at {dest}{checksum}"
        ) from None


def _fetch(url: str, dest: Path, expected: str, *, show_progress: bool) -> None:
    with _open(url, dest, expected) as response, atomic_file(dest) as tmp:
        total = int(response.headers.get("Content-Length") or 0) or None
        h = hashlib.md5(usedforsecurity=False)
        try:
            with (
                open(tmp, "wb") as out,
                tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    desc=dest.name,
                    disable=not show_progress,
                ) as bar,
            ):
                while block := response.read(1 << 20):
                    out.write(block)
                    h.update(block)
                    bar.update(len(block))
        except (OSError, http.client.HTTPException) as e:
            raise RecvaeError(f"{url}: the download broke off ({e}); nothing was saved") from None
        got = h.hexdigest()
        if got != expected:
            raise RecvaeError(
                f"{url}: the download has MD5 {got}, but the published checksum is {expected}; "
                f"the file is corrupt or changed upstream, so nothing was saved"
            )


def _published_md5(url: str, dest: Path) -> str:
    """The checksum from a GroupLens ``.md5`` file (``MD5 (name.zip) = hex`` or ``hex  name``)."""
    with _open(url, dest, None) as response:
        text = response.read(4096).decode("utf-8", errors="replace")
    m = _MD5.search(text)
    if not m:
        raise RecvaeError(f"{url}: expected an MD5 checksum, got {text[:60]!r}")
    return m[1].lower()


def _read_md5_file(path: Path) -> str | None:
    if not path.is_file():
        return None
    m = _MD5.search(path.read_text(errors="replace"))
    if not m:
        raise RecvaeError(f"{path}: expected an MD5 checksum (32 hex digits)")
    return m[1].lower()


def _write_md5_file(path: Path, md5: str, name: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(f"MD5 ({name}) = {md5}\n")
