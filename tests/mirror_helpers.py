"""Test fixtures for mirrors: a real HTTP server on 127.0.0.1 and throwaway keys.

:class:`MirrorServer` serves a directory with HTTP/1.1 keep-alive and byte
ranges (python's SimpleHTTPRequestHandler has no Range support), and can be
told to misbehave per path: answer with an error status, cut the connection
after N bytes, stall after sending the headers, or ignore Range requests.
Every request is logged with its Range header so tests can see resumes.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from vzpkg.core.gpg import Keyring
from vzpkg.core.types import Compression, InstalledPackage
from vzpkg.mirror import MirrorConfig, PublishReport, TrustedKey, publish
from vzpkg.store.cachestore import CacheStore
from vzpkg.store.manifest import Manifest

RANGE_RE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass
class Misbehaviour:
    status: dict[str, int] = field(default_factory=dict)     # path -> HTTP status
    cut_after: dict[str, int] = field(default_factory=dict)  # path -> bytes, then close
    cut_times: dict[str, int] = field(default_factory=dict)  # how often (default always)
    stall: set[str] = field(default_factory=set)             # headers, some bytes, silence
    ignore_range: bool = False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # headers and body go out in separate writes; without this, Nagle plus delayed
        # ACKs add 40 ms to every small file (real servers set it too)
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _error(self, code: int) -> None:
        body = f"error {code}\n".encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _serve(self, *, head: bool) -> None:
        path = self.path.split("?", 1)[0].lstrip("/")
        rng = self.headers.get("Range")
        srv = self.server
        with srv.lock:
            srv.log.append((path, rng))
        bad = srv.bad
        if srv.redirect_to:
            self.send_response(301)
            self.send_header("Location", srv.redirect_to + path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path in bad.status:
            self._error(bad.status[path])
            return
        file = (srv.root / path).resolve()
        if not file.is_relative_to(srv.root) or not file.is_file():
            self._error(404)
            return
        size = file.stat().st_size
        start, end = 0, size - 1
        m = RANGE_RE.match(rng or "")
        if m and not bad.ignore_range:
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            self.send_response(200)
        count = end - start + 1
        self.send_header("Content-Length", str(count))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if head:
            return
        limit = count
        cut = False
        with srv.lock:
            if path in bad.cut_after:
                left = bad.cut_times.get(path)
                if left is None or left > 0:
                    limit, cut = min(count, bad.cut_after[path]), True
                    if left is not None:
                        bad.cut_times[path] = left - 1
        with file.open("rb") as f:
            if path in bad.stall:
                self.wfile.write(f.read(min(count // 2, 4096)))
                srv.stop.wait(60)
                self.close_connection = True
                return
            if limit > 0:
                self.connection.sendfile(f, start, limit)
        if cut:
            self.close_connection = True
            self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root.resolve()
        self.bad = Misbehaviour()
        self.log: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.redirect_to = ""


class MirrorServer:
    """``with MirrorServer(dir) as srv:`` serves *dir* at ``srv.url``."""

    def __init__(self, root: Path) -> None:
        self._srv = _Server(root)
        self._thread = threading.Thread(target=self._srv.serve_forever, args=(0.05,),
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = self._srv.server_address[:2]
        return f"http://{host!s}:{port}/"

    @property
    def bad(self) -> Misbehaviour:
        return self._srv.bad

    @property
    def redirect_to(self) -> str:
        return self._srv.redirect_to

    @redirect_to.setter
    def redirect_to(self, url: str) -> None:
        """Answer every request with a 301 to the same path under *url*."""
        self._srv.redirect_to = url

    @property
    def log(self) -> list[tuple[str, str | None]]:
        with self._srv.lock:
            return list(self._srv.log)

    def requested(self, suffix: str) -> list[str | None]:
        """Range headers of the requests whose path ends with *suffix*."""
        return [r for p, r in self.log if p.endswith(suffix)]

    def __enter__(self) -> MirrorServer:
        self._thread.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._srv.stop.set()
        self._srv.shutdown()
        self._srv.server_close()
        self._thread.join(5)


def dead_url() -> str:
    """A 127.0.0.1 URL where nothing listens (a mirror that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


# ---- throwaway OpenPGP keys -------------------------------------------------------------

def make_key(home: Path, uid: str = "vzpkg mirror test <mirror@test.invalid>") -> str:
    """Generate a passphrase-less ed25519 signing key in *home*; its fingerprint."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--passphrase", "",
                    "--quick-gen-key", uid, "ed25519", "sign", "never"],
                   check=True, capture_output=True)
    out = subprocess.run(["gpg", "--homedir", str(home), "--with-colons",
                          "--list-secret-keys", uid], check=True, capture_output=True,
                         text=True).stdout
    return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))


def export_key(home: Path, fpr: str, dest: Path) -> Path:
    out = subprocess.run(["gpg", "--homedir", str(home), "--armor", "--export", fpr],
                         check=True, capture_output=True).stdout
    dest.write_bytes(out)
    return dest


def kill_agent(home: Path) -> None:
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"],
                   capture_output=True, check=False)


# ---- a world to publish from and pull into ----------------------------------------------

@dataclass(frozen=True)
class Keys:
    home: Path          # GNUPGHOME with the trusted signing key
    fpr: str
    pub: Path           # its armored public key
    other_home: Path    # a second key nobody trusts
    other_fpr: str
    other_pub: Path

    def close(self) -> None:
        kill_agent(self.home)
        kill_agent(self.other_home)


def make_keys(base: Path) -> Keys:
    home, other = base / "gpg-trusted", base / "gpg-other"
    fpr = make_key(home)
    ofpr = make_key(other, "someone else <other@test.invalid>")
    return Keys(home, fpr, export_key(home, fpr, base / "trusted.asc"),
                other, ofpr, export_key(other, ofpr, base / "other.asc"))


def make_cache(cache_dir: Path, name: str, size: int = 1 << 20, *,
               seed: int = 1, packages: Sequence[InstalledPackage] = ()) -> Manifest:
    """Commit a real .tar.zst cache of about *size* incompressible bytes to the store."""
    store = CacheStore(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".src") as src:
        payload = Path(src) / "payload.bin"
        rnd = random.Random(seed)
        payload.write_bytes(rnd.randbytes(size))
        (Path(src) / "etc").mkdir()
        (Path(src) / "etc" / "os-release").write_text(f"ID=test\nVERSION_ID={seed}\n")
        staged = store.staging(name, Compression.ZSTD)
        subprocess.run(["tar", "-C", src, "--zstd", "-cf", str(staged), "."], check=True)
    data = staged.read_bytes()
    parts = name.split("-")
    m = Manifest(
        name=name, distribution=parts[0], release=parts[1], arch=parts[2],
        set_name=parts[3], serial=1, plan_digest=None, repo_digest=None,
        source_date=0, backend="import", tools={"vzpkg": "test"},
        packages=tuple(packages) or (InstalledPackage("base-files", str(seed), "all"),),
        file_count=3, unpacked_size=size, tarball=f"{name}.tar.zst", compression="zstd",
        size=len(data), sha256=hashlib.sha256(data).hexdigest())
    with store.lock(name):
        return store.commit(name, staged, m).manifest


def publish_tree(cache_dir: Path, dest: Path, keys: Keys, names: Sequence[str] = (),
                 keep: int | None = None) -> PublishReport:
    with Keyring(keys.home) as kr:
        return publish(CacheStore(cache_dir), dest, names, keyring=kr, keyid=keys.fpr,
                       keep=keep)


def sign_file(path: Path, home: Path, fpr: str) -> Path:
    """(Re-)write the detached armored signature ``<path>.asc`` with key *fpr*."""
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--yes", "--pinentry-mode",
                    "loopback", "--passphrase", "", "--local-user", fpr, "--armor",
                    "--detach-sign", "--output", f"{path}.asc", str(path)],
                   check=True, capture_output=True)
    return Path(f"{path}.asc")


def edit_index(tree: Path, edit: Callable[[dict[str, Any]], None], keys: Keys) -> None:
    """Change the index as a (trusted) publisher would, and re-sign it."""
    index = tree / "index.json"
    doc = json.loads(index.read_text())
    edit(doc)
    index.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    sign_file(index, keys.home, keys.fpr)


def config_for(keys: Keys, mirrors: Sequence[str], *, timeout: float = 3.0,
               retries: int = 3) -> MirrorConfig:
    return MirrorConfig(mirrors=tuple(mirrors),
                        trusted_keys=(TrustedKey(keys.pub, keys.fpr),),
                        connect_timeout=timeout, read_timeout=timeout, retries=retries)


def snapshot(cache_dir: Path) -> dict[str, str]:
    """sha256 of every file in the cache directory (locks and partial downloads aside)."""
    out = {}
    for p in sorted(cache_dir.rglob("*")):
        rel = p.relative_to(cache_dir).as_posix()
        if p.is_file() and not rel.startswith((".locks/", ".partial/")):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out
