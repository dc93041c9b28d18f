"""The shared package download cache, served to package managers by a local proxy.

Package managers (debootstrap, mmdebstrap, apt in the build VE) are pointed at
``http://127.0.0.1:PORT/<key>/`` instead of the real mirror.  The proxy:

* serves immutable files (``pool/…`` and ``…/by-hash/…``) from the cache, and
  fetches and keeps them on a miss;
* fetches mutable index files (``InRelease``, ``Packages.xz`` …) upstream with a
  conditional GET, so an unchanged file costs one 304 and no download;
* offline, serves only what the cache holds and records what was missing (an
  index asked for in one compression is not missing when the cache holds it in
  another, which apt then takes: a cache filled when apt preferred .xz still
  builds offline now that it prefers .gz);
* within one build, serves an index file fetched earlier in that build from the
  build's own copy: the repository state verified at the start (and recorded in
  the manifest) is exactly what the package manager installs from.

It reads and writes only strictly below the mirror's own directory in the
cache: a path with an empty, ``.`` or ``..`` component, a leading ``/``, a
backslash or a control character, as sent or percent-decoded, is answered 400
and never forwarded (it listens on 127.0.0.1 without authentication).

It changes no byte: signatures and checksums are still checked end to end by
the package manager, against the template's pinned keys.  A pool file it
downloads is kept only if its sha256 is the one the package indexes served in
the same session give (or none names it); otherwise it is served once, from the
session's directory, and the package manager reports the mismatch.  Files are
written to a temporary name and renamed, so concurrent builds share the cache
safely; each build holds a shared lock on it, and pruning takes the exclusive
lock.

The HTTP server starts on the first ``url_for`` and ``requests`` is imported on
the first download: a build whose package manager never asks (dnf keeps its own
packages in the cache directory) pays for neither.
"""

from __future__ import annotations

import contextlib
import fcntl
import filecmp
import hashlib
import os
import re
import shutil
import tempfile
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vzpkg.core.errors import StoreError

if TYPE_CHECKING:
    import http.server

    import requests

CHUNK = 1 << 20
TIMEOUT = (15, 120)
COMPRESSIONS = (".gz", ".xz", ".bz2", ".lzma", ".zst")
BY_HASH = re.compile(r"(?P<dir>.+)/by-hash/SHA256/(?P<hash>[0-9a-f]{64})")
# a binary package index, by name or by hash
INDEX = re.compile(r"dists/.+/binary-[^/]+/(Packages(\.gz|\.xz)?|by-hash/SHA256/[0-9a-f]{64})")
FIELDS = re.compile(rb"^(Filename|SHA256): *(\S+)|^$", re.M)
_BAD_CHARS = frozenset("\\" + "".join(map(chr, range(32))) + "\x7f")


def upstream_key(url: str) -> str:
    """A short, stable directory name for an upstream mirror URL."""
    return hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


def immutable(path: str) -> bool:
    return path.startswith("pool/") or "/by-hash/" in path


class UnsafePath(StoreError):
    """A requested path that would leave the mirror's directory in the cache."""

    def __init__(self, path: str) -> None:
        super().__init__(f"the package cache refuses {path!r}: not a plain path below "
                         "the mirror (empty, '.', '..', absolute, backslash, NUL or "
                         "percent-encoded forms of them)",
                         hint="check the repository's suite and paths in the template")


def cache_relpath(path: str) -> str | None:
    """*path* if it names a file strictly below a mirror's directory, else None.

    Checked as sent and after each round of percent-decoding (a mirror decodes
    what the proxy forwards): no empty, ``.`` or ``..`` component, no leading
    ``/``, no backslash, NUL or other control character."""
    seen = path
    for _ in range(4):
        if not seen or seen.startswith("/") or any(c in seen for c in _BAD_CHARS):
            return None
        if any(part in ("", ".", "..") for part in seen.split("/")):
            return None
        decoded = urllib.parse.unquote(seen, errors="surrogateescape")
        if decoded == seen:
            return path
        seen = decoded
    return None         # encoded over and over: no mirror names a file so


@dataclass
class ProxyStats:
    downloaded_bytes: int = 0
    fetched: list[str] = field(default_factory=list)
    hits: int = 0
    not_modified: int = 0
    client_not_modified: int = 0    # 304s to clients whose copy was current
    missing: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)   # served once, not kept


class CachingProxy:
    """Context manager: a caching HTTP proxy for a set of upstream mirrors."""

    def __init__(self, cache_dir: Path, *, offline: bool = False) -> None:
        self.dir = cache_dir
        self.offline = offline
        self.stats = ProxyStats()
        self._fresh: dict[Path, Path] = {}  # mutable file -> this session's copy
        self._modified: dict[Path, str] = {}  # session copy -> upstream Last-Modified
        self._session_dir: Path | None = None
        self.upstreams: dict[str, str] = {}
        self._lock = threading.Lock()
        self._session_obj: requests.Session | None = None
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lockfile: Any = None
        self._entered = False
        # told of every .deb it serves (the payload cache makes their payloads)
        self.on_package: Callable[[Path], None] | None = None
        # package indexes served in this session, and what they say of pool files
        self._indexes: dict[str, list[Path]] = {}
        self._pool_sha256: dict[str, dict[str, str]] = {}
        self._indexes_read: set[Path] = set()   # each read once, however many clients
        self.indexes_read = 0                   # how many index files were parsed
        self._index_lock = threading.Lock()
        # one download per file at a time: concurrent clients asking for the same
        # file wait for the first one's download and are then served from the cache
        self._inflight: dict[Path, threading.Lock] = {}
        # one line per request, when set: "fetched|hit|missing|refused <url> <bytes>"
        self.log: Callable[[str], None] | None = None

    # -- public -----------------------------------------------------------------
    def url_for(self, upstream: str) -> str:
        """The local URL that stands for *upstream*."""
        key = upstream_key(upstream)
        self.upstreams[key] = upstream.rstrip("/")
        assert self._entered, "proxy not started"
        with self._lock:
            if self._server is None:
                self._start_server()
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/{key}"

    def allow(self, upstream: str) -> None:
        """Serve *upstream* to forward-proxy requests (``GET http://…``, as apt's
        ``Acquire::http::Proxy`` and dnf's ``proxy`` send them) as well."""
        self.upstreams[upstream_key(upstream)] = upstream.rstrip("/")

    def port(self) -> int:
        """The proxy's port on 127.0.0.1 (starting it)."""
        assert self._entered, "proxy not started"
        with self._lock:
            if self._server is None:
                self._start_server()
        assert self._server is not None
        return int(self._server.server_address[1])

    def fetch(self, upstream: str, path: str) -> Path | None:
        """Get one file through the cache (also used directly, e.g. InRelease)."""
        key = upstream_key(upstream)
        self.upstreams[key] = upstream.rstrip("/")
        if cache_relpath(path) is None:
            raise UnsafePath(path)
        return self._get(key, path)

    def __enter__(self) -> CachingProxy:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lockfile = open(self.dir / ".lock", "a")
        fcntl.flock(self._lockfile, fcntl.LOCK_SH)
        self._entered = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._session_obj is not None:
            self._session_obj.close()
        if self._session_dir is not None:
            shutil.rmtree(self._session_dir, ignore_errors=True)
            self._session_dir = None
            self._fresh.clear()
        if self._lockfile is not None:
            self._lockfile.close()
        self._entered = False

    # -- internals --------------------------------------------------------------
    def _start_server(self) -> None:
        import http.server
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy._serve(self, body=True)

            def do_HEAD(self) -> None:
                proxy._serve(self, body=False)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # a short poll keeps shutdown (at the end of every build) quick
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def _session(self) -> requests.Session:
        with self._lock:
            if self._session_obj is None:
                import requests
                self._session_obj = requests.Session()
            return self._session_obj

    def _local(self, key: str, path: str) -> Path:
        """Where *path* of upstream *key* is kept: always strictly below the key's own
        directory (:class:`UnsafePath` otherwise, whatever the caller checked)."""
        top = self.dir / key
        if cache_relpath(path) is None:
            raise UnsafePath(path)
        local = top / path
        real, real_top = local.resolve(), top.resolve()
        if real == real_top or not real.is_relative_to(real_top):
            raise UnsafePath(path)
        return local

    def _note(self, what: str, key: str, path: str, size: int = 0) -> None:
        if self.log is not None:
            with self._lock:
                self.log(f"{what} {self.upstreams.get(key, key)}/{path} {size}")

    def _forward_target(self, url: str) -> list[str] | None:
        """[key, path] for an absolute ``http://`` URL below an allowed upstream."""
        best: tuple[str, str] | None = None
        for key, up in self.upstreams.items():
            if url.startswith(up + "/") and (best is None or len(up) > len(best[1])):
                best = (key, up)
        if best is None:
            return None
        return [best[0], url[len(best[1]) + 1:]]

    def _serve(self, h: http.server.BaseHTTPRequestHandler, *, body: bool) -> None:
        target = h.path.split("?", 1)[0]
        if target.startswith("http://"):
            # a forward-proxy request: only for the upstreams this host serves
            found = self._forward_target(target)
            if found is None:
                self._note("refused", "-", target)
                h.send_error(403, "not a repository this host's package cache serves")
                return
            parts = found
        elif not target.startswith("/"):
            h.send_error(400)
            return
        else:
            parts = target[1:].split("/", 1)
        if len(parts) != 2 or parts[0] not in self.upstreams:
            h.send_error(404)
            return
        if cache_relpath(parts[1]) is None:
            with self._lock:
                self.stats.errors.append(f"{parts[1]!r}: refused (not a path below the "
                                         "mirror)")
            h.send_error(400)
            return
        import requests
        try:
            local = self._get(parts[0], parts[1])
        except UnsafePath:
            h.send_error(400)
            return
        except requests.RequestException as exc:
            with self._lock:
                self.stats.errors.append(f"{parts[1]}: {exc}")
            h.send_error(502, str(exc)[:200])
            return
        if local is None:
            self._note("missing", parts[0], parts[1])
            h.send_error(404)
            return
        if self.on_package is not None and parts[1].endswith(".deb"):
            self.on_package(local)
        if INDEX.fullmatch(parts[1]):
            with self._index_lock:
                # many VEs' package managers ask for the same index: it is read
                # once (about 0.7 s for Debian's main), not once per client
                if local not in self._indexes_read:
                    self._indexes_read.add(local)
                    self._indexes.setdefault(parts[0], []).append(local)
        modified = None if immutable(parts[1]) else self._modified.get(local)
        if modified and not_modified_since(modified, h.headers.get("If-Modified-Since")):
            # the client's copy is the one this session serves (apt keeps its lists,
            # and the cache built from them, on a 'Hit')
            with self._lock:
                self.stats.client_not_modified += 1
            self._note("unchanged", parts[0], parts[1])
            h.send_response(304)
            h.send_header("Last-Modified", modified)
            h.end_headers()
            return
        size = local.stat().st_size
        h.send_response(200)
        h.send_header("Content-Length", str(size))
        h.send_header("Content-Type", "application/octet-stream")
        if modified:
            h.send_header("Last-Modified", modified)
        h.end_headers()
        if body:
            with local.open("rb") as f:
                shutil.copyfileobj(f, h.wfile, CHUNK)

    def _get(self, key: str, path: str) -> Path | None:
        local = self._local(key, path)
        with self._lock:
            gate = self._inflight.setdefault(local, threading.Lock())
        with gate:
            return self._get_one(key, path, local)

    def _get_one(self, key: str, path: str, local: Path) -> Path | None:
        with self._lock:
            fresh = self._fresh.get(local)
        if fresh is not None:
            with self._lock:
                self.stats.hits += 1
            self._note("hit", key, path)
            return fresh
        if immutable(path) and local.is_file():
            with self._lock:
                self.stats.hits += 1
            self._note("hit", key, path)
            return local
        if self.offline:
            if local.is_file():
                with self._lock:
                    self.stats.hits += 1
                return local
            if not self._other_compression_cached(key, path):
                with self._lock:
                    self.stats.missing.append(path)
            return None
        got = self._download(key, path, local)
        if got is not None and not immutable(path):
            # one build sees one state of the repository: the index verified at its
            # start is the one the package manager gets (a hard link keeps this
            # build's copy even if a concurrent build replaces the cached file)
            with self._lock:
                if local in self._fresh:            # another thread was first
                    return self._fresh[local]
                snap = self._copies_dir() / f"{key}-{path.replace('/', '_')}"
                os.link(got, snap)
                self._fresh[local] = snap
                self._modified[snap] = _last_modified(got)
            return snap
        return got

    def _other_compression_cached(self, key: str, path: str) -> bool:
        """Whether *path* is an index (by name or by hash) that the cached InRelease
        of its suite lists in another compression the cache holds."""
        local = self._local(key, path)
        suite = suite_dir(local, self.dir / key)
        if suite is None:
            return False
        entries = sha256_entries((suite / "InRelease").read_text(encoding="utf-8",
                                                                  errors="replace"))
        rel = str(local.relative_to(suite))
        m = BY_HASH.fullmatch(rel)
        name = (next((n for n, h in entries.items()
                      if h == m["hash"] and n.rpartition("/")[0] == m["dir"]), None)
                if m else rel if rel in entries else None)
        if name is None:
            return False
        base = next((name[:-len(e)] for e in COMPRESSIONS if name.endswith(e)), name)
        for variant in (base, *(base + e for e in COMPRESSIONS)):
            if variant == name or variant not in entries:
                continue
            d = variant.rpartition("/")[0]
            if ((suite / d / "by-hash/SHA256" / entries[variant]).is_file()
                    or (suite / variant).is_file()):
                return True
        return False

    def _copies_dir(self) -> Path:
        """This session's directory of index copies (caller holds the lock)."""
        if self._session_dir is None:
            sessions = self.dir / ".sessions"
            sessions.mkdir(exist_ok=True)
            for old in sessions.iterdir():          # left by killed builds
                pid = old.name.split("-", 1)[0]
                if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                    shutil.rmtree(old, ignore_errors=True)
            self._session_dir = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-",
                                                      dir=sessions))
        return self._session_dir

    def _download(self, key: str, path: str, local: Path) -> Path | None:
        url = f"{self.upstreams[key]}/{path}"
        headers = {}
        meta = local.with_name(local.name + ".etag")
        if local.is_file() and meta.is_file():
            etag, _, modified = meta.read_text().partition("\n")
            if etag:
                headers["If-None-Match"] = etag
            if modified:
                headers["If-Modified-Since"] = modified
        with self._session.get(url, stream=True, timeout=TIMEOUT, headers=headers) as r:
            if r.status_code == 304:
                with self._lock:
                    self.stats.not_modified += 1
                return local
            if r.status_code == 404:
                return None
            r.raise_for_status()
            local.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=local.parent, prefix=".part-")
            n = 0
            h = hashlib.sha256()
            try:
                with os.fdopen(fd, "wb") as f:
                    for chunk in r.iter_content(CHUNK):
                        f.write(chunk)
                        h.update(chunk)
                        n += len(chunk)
                want = self._indexed_sha256(key, path) if path.startswith("pool/") else None
                if want is not None and want != h.hexdigest():
                    # not what this session's package index says: served once (the
                    # package manager reports the mismatch), never kept for later builds
                    with self._lock:
                        self.stats.rejected.append(path)
                        bad = self._copies_dir() / f"rejected-{path.replace('/', '_')}"
                    os.replace(tmp, bad)
                    local = bad
                elif local.is_file() and filecmp.cmp(tmp, local, shallow=False):
                    Path(tmp).unlink()      # unchanged: leave the cached copy alone
                else:
                    os.replace(tmp, local)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            if not immutable(path) and (r.headers.get("ETag") or
                                        r.headers.get("Last-Modified")):
                meta.write_text(f"{r.headers.get('ETag', '')}\n"
                                f"{r.headers.get('Last-Modified', '')}")
        with self._lock:
            self.stats.downloaded_bytes += n
            self.stats.fetched.append(path)
        self._note("fetched", key, path, n)
        return local

    def _indexed_sha256(self, key: str, path: str) -> str | None:
        """The sha256 that the package indexes served in this session give for pool
        file *path* of upstream *key*; None if none names it.  The indexes are read
        at the first download (about 0.9 s for Debian's main): a build served from
        the cache never reads them."""
        with self._index_lock:
            known = self._pool_sha256.setdefault(key, {})
            for index in self._indexes.pop(key, []):
                known.update(pool_sha256(index))
                self.indexes_read += 1
            return known.get(urllib.parse.unquote(path))


def _last_modified(local: Path) -> str:
    """The Last-Modified of cached mutable file *local*: the upstream's, else when
    its content last changed in the cache (an unchanged download leaves the cached
    file, and its mtime, alone)."""
    try:
        meta = local.with_name(local.name + ".etag").read_text()
    except OSError:
        meta = ""
    upstream = meta.partition("\n")[2].strip()
    if upstream:
        return upstream
    from email.utils import formatdate
    return formatdate(local.stat().st_mtime, usegmt=True)


def not_modified_since(modified: str, since: str | None) -> bool:
    """Whether a file last modified at *modified* (an HTTP date) is not newer than
    a client's ``If-Modified-Since`` *since*: an unparsable date never is."""
    if not since:
        return False
    from email.utils import parsedate_to_datetime
    try:
        return parsedate_to_datetime(modified) <= parsedate_to_datetime(since)
    except (TypeError, ValueError, IndexError):
        return False


def pool_sha256(index: Path) -> dict[str, str]:
    """{Filename: SHA256} of a Packages index (plain, .gz or .xz, by content);
    empty for a file that is not one."""
    try:
        data = index.read_bytes()
        if data[:2] == b"\x1f\x8b":
            import gzip
            data = gzip.decompress(data)
        elif data[:6] == b"\xfd7zXZ\x00":
            import lzma
            data = lzma.decompress(data)
    except (OSError, EOFError, ValueError):
        return {}
    out: dict[str, str] = {}
    name = sha = b""
    for field_name, value in FIELDS.findall(data):
        if not field_name:              # a blank line ends a stanza
            name = sha = b""
            continue
        if field_name == b"Filename":
            name = value
        else:
            sha = value
        if name and sha:
            out[name.decode("utf-8", "replace")] = sha.decode("ascii", "replace")
            name = sha = b""
    return out


def suite_dir(path: Path, top: Path) -> Path | None:
    """The suite holding *path*: the nearest directory above it, below ``dists``
    and *top*, with a cached InRelease."""
    for d in path.parents:
        if d == top or d.name == "dists":
            return None
        if (d / "InRelease").is_file():
            return d
    return None


def sha256_entries(release: str) -> dict[str, str]:
    """{file name: sha256} from the SHA256 section of a Release/InRelease text."""
    out: dict[str, str] = {}
    section = False
    for line in release.splitlines():
        if not line.startswith(" "):
            section = line.rstrip() == "SHA256:"
            continue
        fields = line.split()
        if section and len(fields) == 3:
            out[fields[2]] = fields[0]
    return out


@contextlib.contextmanager
def exclusive(cache_dir: Path) -> Iterator[None]:
    """Hold the package cache exclusively (pruning); StoreError at once while a
    build holds it."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"the package cache {cache_dir} is in use by a build",
                             hint="run it again when the build has finished") from None
        yield
