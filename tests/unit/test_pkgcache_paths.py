"""The package-cache proxy serves and writes only below its own cache directory.

Attacks from a security review: ``GET /<key>//abs/path`` made pathlib replace the
cache directory with ``/abs/path`` (read offline, overwritten with an upstream's
answer online); percent-encoded and backslash forms must not get through either.
Each test talks raw HTTP to a real proxy (http.client sends the path verbatim).
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from vzpkg.build.pkgcache import CachingProxy, cache_relpath
from vzpkg.core.errors import StoreError

UPSTREAM = "http://127.0.0.1:9/mirror"      # never contacted offline


def _raw_get(base: str, path: str) -> tuple[int, bytes]:
    """GET *path* exactly as given (no normalisation, no quoting)."""
    host, _, port = base.removeprefix("http://").split("/", 1)[0].partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _attacks(key: str, outside: Path, cache: Path) -> list[str]:
    rel = Path("..", "..", *outside.relative_to("/").parts)   # from cache/key
    up = "/".join(".." for _ in cache.parts[1:]) + "/.."
    enc_up = up.replace("..", "%2e%2e")
    return [
        f"/{key}/{outside}",                                   # //abs: pathlib replaces
        f"/{key}/{str(outside).replace('/', '%2F')}",          # the same, encoded
        f"/{key}/%2F{str(outside).lstrip('/')}",
        f"/{key}/{rel}",                                       # plain ..
        f"/{key}/{str(rel).replace('..', '%2e%2e')}",          # encoded ..
        f"/{key}/{str(rel).replace('..', '%252e%252e')}",      # double-encoded ..
        f"/{key}/{str(rel).replace('..', '.%2E')}",
        f"/{key}/pool/{enc_up}{outside}",
        f"/{key}/pool%2F..%2F..%2F{outside.name}",
        f"/{key}/{str(rel).replace('/', '%5C')}",              # backslashes
        f"/{key}/{str(rel).replace('/', chr(92))}",
        f"/{key}/pool/x%00/../../{outside.name}",              # NUL
        f"/{key}/./pool/x",
        f"/{key}/pool//x",
        f"/{key}/",
    ]


@pytest.fixture
def planted(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A cache directory and a file outside it, beside it in the same tree."""
    cache = tmp_path / "cache"
    outside = tmp_path / "secret"
    outside.write_bytes(b"host secret\n")
    yield cache, outside


def test_offline_the_proxy_reads_nothing_outside_its_cache(
        planted: tuple[Path, Path]) -> None:
    cache, outside = planted
    with CachingProxy(cache, offline=True) as proxy:
        base = proxy.url_for(UPSTREAM)
        key = base.rsplit("/", 1)[1]
        for path in [*_attacks(key, outside, cache), f"/{key}//etc/passwd",
                     f"/{key}/%2Fetc%2Fpasswd"]:
            status, body = _raw_get(base, path)
            assert status in (400, 404), f"{path}: {status}"
            assert b"host secret" not in body and b"root:" not in body, path
        # an ordinary miss is still a 404 and is reported as missing
        assert _raw_get(base, f"/{key}/pool/main/h/hello.deb")[0] == 404
        assert proxy.stats.missing == ["pool/main/h/hello.deb"]


class _AlwaysOk(BaseHTTPRequestHandler):
    """An upstream that answers 200 with the same bytes to any path."""

    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[str]] = []

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.seen.append(self.path)
        body = b"overwritten by the upstream"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def upstream() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    handler = type("Handler", (_AlwaysOk,), {"seen": seen})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/mirror", seen
    finally:
        srv.shutdown()
        srv.server_close()


def test_online_the_proxy_writes_nothing_outside_its_cache(
        planted: tuple[Path, Path], upstream: tuple[str, list[str]]) -> None:
    cache, outside = planted
    url, seen = upstream
    before = sorted(p for p in outside.parent.rglob("*") if not p.is_relative_to(cache))
    with CachingProxy(cache) as proxy:
        base = proxy.url_for(url)
        key = base.rsplit("/", 1)[1]
        for path in _attacks(key, outside, cache):
            status, _ = _raw_get(base, path)
            assert status in (400, 404), f"{path}: {status}"
        assert seen == [], "a refused path was forwarded upstream"
        # an ordinary path still goes through, and lands inside the cache
        status, body = _raw_get(base, f"/{key}/pool/main/h/hello_1.0%2Bb1_amd64.deb")
        assert (status, body) == (200, b"overwritten by the upstream")
    assert outside.read_bytes() == b"host secret\n"
    after = sorted(p for p in outside.parent.rglob("*") if not p.is_relative_to(cache))
    assert after == before, "a file appeared outside the cache"
    assert (cache / key / "pool/main/h/hello_1.0%2Bb1_amd64.deb").is_file()


def test_fetch_refuses_a_path_out_of_the_mirror(planted: tuple[Path, Path]) -> None:
    cache, outside = planted
    with CachingProxy(cache, offline=True) as proxy:
        for path in (str(outside), f"dists/../../../{outside.name}", "dists/%2e%2e/x"):
            with pytest.raises(StoreError, match="refuses"):
                proxy.fetch(UPSTREAM, path)


def test_a_symlink_planted_in_the_cache_is_not_followed_out(
        planted: tuple[Path, Path]) -> None:
    """Defence in depth: _local itself checks where the path resolves."""
    cache, outside = planted
    with CachingProxy(cache, offline=True) as proxy:
        base = proxy.url_for(UPSTREAM)
        key = base.rsplit("/", 1)[1]
        (cache / key).mkdir(parents=True)
        (cache / key / "pool").symlink_to(outside.parent)
        status, body = _raw_get(base, f"/{key}/pool/{outside.name}")
        assert status == 400 and b"host secret" not in body


@pytest.mark.parametrize("path", ["pool/main/h/hello_1.0%2Bb1_amd64.deb",
                                  "dists/bookworm/InRelease", "a%2541"])
def test_ordinary_paths_are_kept_as_sent(path: str) -> None:
    assert cache_relpath(path) == path
