"""The shared package cache proxy: what it keeps, what it fetches again, offline."""

from __future__ import annotations

import hashlib
from pathlib import Path

import requests

from tests.mirror_helpers import MirrorServer
from vzpkg.build.pkgcache import CachingProxy


def _upstream(tmp_path: Path) -> Path:
    up = tmp_path / "up"
    (up / "pool/main/h").mkdir(parents=True)
    (up / "dists/stable/main/binary-amd64/by-hash/SHA256").mkdir(parents=True)
    (up / "pool/main/h/hello_1.0_amd64.deb").write_bytes(b"deb-v1" * 1000)
    (up / "dists/stable/InRelease").write_text("Date: one\n")
    (up / "dists/stable/main/binary-amd64/by-hash/SHA256/abc").write_text("packages")
    return up


def test_packages_are_kept_and_indices_fetched_again(tmp_path: Path) -> None:
    up = _upstream(tmp_path)
    cache = tmp_path / "cache"
    with MirrorServer(up) as srv:
        upstream = srv.url.rstrip("/")
        with CachingProxy(cache) as proxy:
            base = proxy.url_for(upstream)
            deb = requests.get(f"{base}/pool/main/h/hello_1.0_amd64.deb", timeout=10)
            assert deb.content == b"deb-v1" * 1000
            assert requests.get(f"{base}/dists/stable/InRelease", timeout=10).text == \
                "Date: one\n"
            assert proxy.stats.downloaded_bytes == 6000 + 10
        # upstream changes: the package file name is immutable, the index is not
        (up / "pool/main/h/hello_1.0_amd64.deb").write_bytes(b"changed")
        (up / "dists/stable/InRelease").write_text("Date: two\n")
        with CachingProxy(cache) as proxy:
            base = proxy.url_for(upstream)
            deb = requests.get(f"{base}/pool/main/h/hello_1.0_amd64.deb", timeout=10)
            assert deb.content == b"deb-v1" * 1000, "a pool file was fetched again"
            assert requests.get(f"{base}/dists/stable/InRelease", timeout=10).text == \
                "Date: two\n"
            assert proxy.stats.hits == 1 and proxy.stats.fetched == ["dists/stable/InRelease"]
        pool_requests = [p for p, _ in srv.log if "pool/" in p]
        assert len(pool_requests) == 1


def test_an_unchanged_index_is_not_rewritten(tmp_path: Path) -> None:
    up = _upstream(tmp_path)
    cache = tmp_path / "cache"
    with MirrorServer(up) as srv, CachingProxy(cache) as proxy:
        local = proxy.fetch(srv.url, "dists/stable/InRelease")
        assert local is not None
        before = local.stat()
        again = proxy.fetch(srv.url, "dists/stable/InRelease")
        assert again == local
        after = local.stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_offline_serves_the_cache_and_names_what_is_missing(tmp_path: Path) -> None:
    up = _upstream(tmp_path)
    cache = tmp_path / "cache"
    with MirrorServer(up) as srv:
        with CachingProxy(cache) as proxy:
            assert proxy.fetch(srv.url, "pool/main/h/hello_1.0_amd64.deb") is not None
        served = len(srv.log)
        with CachingProxy(cache, offline=True) as proxy:
            base = proxy.url_for(srv.url)
            ok = requests.get(f"{base}/pool/main/h/hello_1.0_amd64.deb", timeout=10)
            assert ok.status_code == 200
            missing = requests.get(f"{base}/pool/main/h/other_2_amd64.deb", timeout=10)
            assert missing.status_code == 404
            assert proxy.stats.missing == ["pool/main/h/other_2_amd64.deb"]
        assert len(srv.log) == served, "offline mode went to the network"


def test_paths_outside_the_mirror_are_refused(tmp_path: Path) -> None:
    up = _upstream(tmp_path)
    (tmp_path / "secret").write_text("no")
    with MirrorServer(up) as srv, CachingProxy(tmp_path / "cache") as proxy:
        base = proxy.url_for(srv.url)
        port_base = base.rsplit("/", 1)[0]
        assert requests.get(f"{base}/../secret", timeout=10).status_code == 404
        assert requests.get(f"{port_base}/unknownkey/pool/x", timeout=10).status_code == 404


def test_one_build_sees_one_state_of_an_index(tmp_path: Path) -> None:
    """An index fetched once in a build is what the package manager gets for the
    rest of that build, even if the mirror (or another build) changes it."""
    up = _upstream(tmp_path)
    with MirrorServer(up) as srv, CachingProxy(tmp_path / "cache") as proxy:
        first = proxy.fetch(srv.url, "dists/stable/InRelease")
        assert first is not None and first.read_text() == "Date: one\n"
        (up / "dists/stable/InRelease").write_text("Date: two\n")
        base = proxy.url_for(srv.url)
        again = requests.get(f"{base}/dists/stable/InRelease", timeout=10)
        assert again.text == "Date: one\n"
        assert [p for p, _ in srv.log].count("dists/stable/InRelease") == 1
    with MirrorServer(up) as srv, CachingProxy(tmp_path / "cache") as proxy:
        nxt = proxy.fetch(srv.url, "dists/stable/InRelease")
        assert nxt is not None and nxt.read_text() == "Date: two\n"   # a new build
    assert not list((tmp_path / "cache" / ".sessions").iterdir())


def test_offline_an_index_in_another_cached_compression_is_not_missing(
        tmp_path: Path) -> None:
    """apt asks for Packages.gz first and falls back to .xz: offline, a cache that
    holds only the .xz (filled when apt preferred it) must not count the .gz as a
    miss, or the build would fail although apt got its index."""
    up = _upstream(tmp_path)
    idx = up / "dists/stable/main/binary-amd64"
    xz, gz = b"\xfd7zXZ packages", b"\x1f\x8b packages"
    hx, hg = hashlib.sha256(xz).hexdigest(), hashlib.sha256(gz).hexdigest()
    for h, data in ((hx, xz), (hg, gz)):
        (idx / "by-hash/SHA256" / h).write_bytes(data)
    (up / "dists/stable/InRelease").write_text(
        "Date: one\nSHA256:\n"
        f" {hashlib.sha256(b'plain').hexdigest()} 5 main/binary-amd64/Packages\n"
        f" {hg} {len(gz)} main/binary-amd64/Packages.gz\n"
        f" {hx} {len(xz)} main/binary-amd64/Packages.xz\n"
        f" {'0' * 64} 9 main/source/Sources.xz\n")
    cache = tmp_path / "cache"
    with MirrorServer(up) as srv:
        with CachingProxy(cache) as proxy:      # online: InRelease and the .xz only
            assert proxy.fetch(srv.url, "dists/stable/InRelease") is not None
            assert proxy.fetch(srv.url, f"dists/stable/main/binary-amd64/by-hash/SHA256/{hx}")
        with CachingProxy(cache, offline=True) as proxy:
            base = proxy.url_for(srv.url)
            for path in (f"main/binary-amd64/by-hash/SHA256/{hg}",
                         "main/binary-amd64/Packages.gz", "main/binary-amd64/Packages"):
                assert requests.get(f"{base}/dists/stable/{path}", timeout=10).status_code \
                    == 404
            got = requests.get(f"{base}/dists/stable/main/binary-amd64/by-hash/SHA256/{hx}",
                               timeout=10)
            assert got.content == xz
            assert proxy.stats.missing == []
            # an index of which no compression is cached is missing
            gone = requests.get(f"{base}/dists/stable/main/source/Sources.gz", timeout=10)
            assert gone.status_code == 404
            assert proxy.stats.missing == ["dists/stable/main/source/Sources.gz"]


def _indexed_upstream(tmp_path: Path, deb: bytes) -> Path:
    """An upstream whose gzip'd Packages index (served by hash) names the sha256 of
    *deb*, among other stanzas, with fields in two orders."""
    import gzip
    up = tmp_path / "up"
    pool = up / "pool/main/h/hello"
    pool.mkdir(parents=True)
    index = (b"Package: other\nSHA256: " + b"1" * 64 + b"\nFilename: pool/main/o/other.deb\n\n"
             b"Package: hello\nFilename: pool/main/h/hello/hello_1.0+b1_amd64.deb\n"
             b"Size: 3\nSHA256: " + hashlib.sha256(deb).hexdigest().encode() + b"\n\n")
    gz = gzip.compress(index)
    d = up / "dists/stable/main/binary-amd64/by-hash/SHA256"
    d.mkdir(parents=True)
    (d / hashlib.sha256(gz).hexdigest()).write_bytes(gz)
    return up


def test_a_package_that_does_not_match_the_index_is_served_but_never_kept(
        tmp_path: Path) -> None:
    good = b"the real package" * 100
    up = _indexed_upstream(tmp_path, good)
    # the test server maps request paths to names as they are, quoting and all
    deb = up / "pool/main/h/hello/hello_1.0%2Bb1_amd64.deb"
    index = next(up.glob("dists/stable/main/binary-amd64/by-hash/SHA256/*"))
    cache = tmp_path / "cache"
    kept = cache.glob("*/pool/main/h/hello/*.deb")
    with MirrorServer(up) as srv:
        deb.write_bytes(b"damaged on the way")
        with CachingProxy(cache) as proxy:
            base = proxy.url_for(srv.url.rstrip("/"))
            requests.get(f"{base}/{index.relative_to(up)}", timeout=10).raise_for_status()
            # apt asks for the name with + quoted; the index names it unquoted
            r = requests.get(f"{base}/pool/main/h/hello/hello_1.0%2Bb1_amd64.deb", timeout=10)
            assert r.content == b"damaged on the way"    # apt sees it, and reports it
            assert proxy.stats.rejected == ["pool/main/h/hello/hello_1.0%2Bb1_amd64.deb"]
        assert not list(kept), "a package that fails its index's checksum was kept"
        deb.write_bytes(good)                           # the mirror is mended
        with CachingProxy(cache) as proxy:
            base = proxy.url_for(srv.url.rstrip("/"))
            requests.get(f"{base}/{index.relative_to(up)}", timeout=10).raise_for_status()
            r = requests.get(f"{base}/pool/main/h/hello/hello_1.0%2Bb1_amd64.deb", timeout=10)
            assert r.content == good and proxy.stats.rejected == []
        assert [p.read_bytes() for p in cache.glob("*/pool/main/h/hello/*.deb")] == [good]
        assert not list(cache.rglob(".part-*")) and not list(cache.rglob("rejected-*"))


def test_an_index_served_to_many_clients_is_read_once(tmp_path: Path) -> None:
    """Fifty VEs' apt ask for the same Packages index: the proxy reads it once to
    check the packages it downloads (reading it per client cost 0.7 s each for
    Debian's main), and the check still holds for every client."""
    good = b"the real package" * 100
    up = _indexed_upstream(tmp_path, good)
    (up / "pool/main/h/hello/hello_1.0%2Bb1_amd64.deb").write_bytes(b"damaged")
    index = next(up.glob("dists/stable/main/binary-amd64/by-hash/SHA256/*"))
    with MirrorServer(up) as srv, CachingProxy(tmp_path / "cache") as proxy:
        base = proxy.url_for(srv.url.rstrip("/"))
        for _ in range(5):
            requests.get(f"{base}/{index.relative_to(up)}", timeout=10).raise_for_status()
        for _ in range(2):
            r = requests.get(f"{base}/pool/main/h/hello/hello_1.0%2Bb1_amd64.deb",
                             timeout=10)
            assert r.content == b"damaged"
        assert proxy.indexes_read == 1
        assert proxy.stats.rejected == ["pool/main/h/hello/hello_1.0%2Bb1_amd64.deb"] * 2


def test_a_client_whose_index_is_current_gets_304(tmp_path: Path) -> None:
    """apt asks again with If-Modified-Since (the Last-Modified it was given): while
    the proxy's copy is the same it answers 304, and apt keeps its lists and the
    cache built from them ('Hit'); once the index changed it gets the new one."""
    up = _upstream(tmp_path)
    with MirrorServer(up) as srv, CachingProxy(tmp_path / "cache") as proxy:
        base = proxy.url_for(srv.url.rstrip("/"))
        first = requests.get(f"{base}/dists/stable/InRelease", timeout=10)
        stamp = first.headers["Last-Modified"]
        again = requests.get(f"{base}/dists/stable/InRelease", timeout=10,
                             headers={"If-Modified-Since": stamp})
        assert again.status_code == 304 and again.content == b""
        assert proxy.stats.client_not_modified == 1
        older = requests.get(f"{base}/dists/stable/InRelease", timeout=10,
                             headers={"If-Modified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"})
        assert older.status_code == 200 and older.text == "Date: one\n"
        junk = requests.get(f"{base}/dists/stable/InRelease", timeout=10,
                            headers={"If-Modified-Since": "yesterday"})
        assert junk.status_code == 200
        # pool files are immutable: served as they are, whatever the client says
        deb = requests.get(f"{base}/pool/main/h/hello_1.0_amd64.deb", timeout=10,
                           headers={"If-Modified-Since": stamp})
        assert deb.status_code == 200
    (up / "dists/stable/InRelease").write_text("Date: two\n")
    import time
    time.sleep(1.1)                 # a new session, a changed index: a newer date
    with MirrorServer(up) as srv, CachingProxy(tmp_path / "cache") as proxy:
        base = proxy.url_for(srv.url.rstrip("/"))
        r = requests.get(f"{base}/dists/stable/InRelease", timeout=10,
                         headers={"If-Modified-Since": stamp})
        assert r.status_code == 200 and r.text == "Date: two\n"
