"""Tests for recvae.data.download against a local HTTP server (no internet needed)."""

from __future__ import annotations

import functools
import hashlib
import io
import re
import socket
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import recvae.data.download as download
from recvae.data.download import MOVIELENS_MD5, download_movielens, md5_file
from recvae.data.sources import read_movielens
from recvae.errors import RecvaeError

RATINGS = "userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n2,10,4.0,1260759179\n"


class QuietHandler(SimpleHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        QuietHandler.requests.append(self.path)


@pytest.fixture
def server(tmp_path, monkeypatch):
    """Serve ``tmp_path / "www"`` on 127.0.0.1; yields (base_url, folder)."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(QuietHandler, directory=str(www))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    QuietHandler.requests = []
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", www
    finally:
        httpd.shutdown()
        httpd.server_close()


def small_zip(folder: Path, name: str) -> str:
    """Write ``folder/{name}.zip`` holding ``{name}/ratings.csv``; returns its MD5."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(f"{name}/ratings.csv", RATINGS)
    (folder / f"{name}.zip").write_bytes(buf.getvalue())
    return hashlib.md5(buf.getvalue()).hexdigest()


def dead_url() -> str:
    """A URL on a local port that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_download_verifies_and_caches(server, tmp_path, monkeypatch):
    base_url, www = server
    md5 = small_zip(www, "ml-100k")
    monkeypatch.setitem(MOVIELENS_MD5, "ml-100k", md5)
    cache = tmp_path / "cache"
    path = download_movielens("ml-100k", cache, base_url=base_url, show_progress=False)
    assert path == cache / "ml-100k.zip" and md5_file(path) == md5
    assert sorted(p.name for p in cache.iterdir()) == ["ml-100k.zip"]  # no temp left
    assert len(read_movielens(path)) == 2
    # Cached: returned without any request, even with the network gone.
    again = download_movielens("ml-100k", cache, base_url=dead_url(), show_progress=False)
    assert again == path
    assert QuietHandler.requests == ["/ml-100k.zip"]


def test_checksum_mismatch_deletes_and_raises(server, tmp_path, monkeypatch):
    base_url, www = server
    small_zip(www, "ml-1m")
    monkeypatch.setitem(MOVIELENS_MD5, "ml-1m", "0" * 32)
    cache = tmp_path / "cache"
    with pytest.raises(RecvaeError, match=r"ml-1m\.zip: the download has MD5 \w+, but the publ"):
        download_movielens("ml-1m", cache, base_url=base_url, show_progress=False)
    assert list(cache.iterdir()) == []


def test_wrong_cached_file_is_downloaded_again(server, tmp_path, monkeypatch):
    base_url, www = server
    md5 = small_zip(www, "ml-25m")
    monkeypatch.setitem(MOVIELENS_MD5, "ml-25m", md5)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "ml-25m.zip").write_bytes(b"truncated")
    path = download_movielens("ml-25m", cache, base_url=base_url, show_progress=True)
    assert md5_file(path) == md5


def test_unpinned_checksum_is_fetched_and_remembered(server, tmp_path):
    base_url, www = server
    assert MOVIELENS_MD5["ml-latest"] is None
    md5 = small_zip(www, "ml-latest")
    (www / "ml-latest.zip.md5").write_text(f"MD5 (ml-latest.zip) = {md5}\n")
    cache = tmp_path / "cache"
    path = download_movielens("ml-latest", cache, base_url=base_url, show_progress=False)
    assert md5_file(path) == md5
    assert md5 in (cache / "ml-latest.zip.md5").read_text()
    # Cached with its checksum beside it: no network needed.
    assert download_movielens("ml-latest", cache, base_url=dead_url(), show_progress=False) == path


def test_offline_message_says_url_and_where_to_place_the_file(tmp_path):
    url = dead_url()
    with pytest.raises(RecvaeError) as e:
        download_movielens("ml-20m", tmp_path / "cache", base_url=url, show_progress=False)
    message = str(e.value)
    assert "\n" not in message
    assert f"{url}ml-20m.zip" in message and "offline" in message
    assert re.search(r"place it at .*cache/ml-20m\.zip \(MD5 cd245b17a1ae2cc31bb1490", message)
    assert not (tmp_path / "cache" / "ml-20m.zip").exists()


def test_http_error_and_unknown_name(server, tmp_path):
    base_url, _ = server
    with pytest.raises(RecvaeError, match=r"ml-10m\.zip: the server answered HTTP 404"):
        download_movielens("ml-10m", tmp_path, base_url=base_url, show_progress=False)
    with pytest.raises(RecvaeError, match=r"unknown MovieLens dataset 'ml-5m': expected one of"):
        download_movielens("ml-5m", tmp_path)


def test_checksum_table():
    assert set(download.MOVIELENS_NAMES) == {
        "ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-32m", "ml-latest-small", "ml-latest",
    }  # fmt: skip
    for md5 in MOVIELENS_MD5.values():
        assert md5 is None or re.fullmatch(r"[0-9a-f]{32}", md5)
    assert MOVIELENS_MD5["ml-20m"] == "cd245b17a1ae2cc31bb14903e1204af3"


def test_shared_ml_latest_small_matches_the_pinned_checksum():
    shared = Path(__file__).parents[2].parent / "shared" / "data"
    z = shared / "ml-latest-small" / "ml-latest-small.zip"
    if not z.is_file():
        pytest.skip(f"shared data not found: {z}")
    assert md5_file(z) == MOVIELENS_MD5["ml-latest-small"]
