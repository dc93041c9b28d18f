"""Test fixtures for RPM: the signed test distribution served on 127.0.0.1.

Use in a test module with::

    from tests.rpm_helpers import rpm_dist_fixture  # noqa: F401  (fixture rpm_dist)

``rpm_dist`` is session-scoped: the distribution is built once per test
session (rpmbuild, rpmsign, createrepo_c; a few seconds) and served by a
``http.server`` thread until the session ends.
"""

from __future__ import annotations

import dataclasses
import functools
import http.server
import importlib
import shutil
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.rpmrepo.builder import Distribution, build_distribution, write_workspace
from vzpkg.build.backends import BuildContext
from vzpkg.build.buildve import BuildLog
from vzpkg.core.gpg import Keyring
from vzpkg.core.settings import load_settings
from vzpkg.template.loader import make_plan
from vzpkg.template.model import Plan

TOOLS = ("rpmbuild", "rpmsign", "rpm", "gpg", "dnf")


class _RecordingHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.requests.append(self.path)


class RepoServer:
    """Serve a directory over HTTP on 127.0.0.1 in a thread (context manager).
    ``requests`` lists every path asked for, in order."""

    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        handler_cls = type("Handler", (_RecordingHandler,), {"requests": self.requests})
        handler = functools.partial(handler_cls, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> RepoServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def unused_port() -> int:
    """A loopback port nothing listens on (for "the repository is down")."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class ServedDistribution:
    dist: Distribution
    base_url: str
    server: RepoServer

    def requested_since(self, mark: int) -> list[str]:
        """Paths requested from the server after ``mark = len(server.requests)``."""
        return list(self.server.requests[mark:])

    def url(self, variant: str = "good") -> str:
        self.dist.repo(variant)             # checks the name
        return f"{self.base_url}/{variant}/"

    @property
    def down_url(self) -> str:
        return f"http://127.0.0.1:{unused_port()}/vztest/"

    @property
    def fingerprint(self) -> str:
        return self.dist.key.fingerprint

    def workspace(self, dest: Path, variant: str = "good", *,
                  fingerprint: str | None = None, url: str | None = None) -> Path:
        """A fresh workspace at *dest* whose template points at *variant*."""
        return write_workspace(dest, self.dist.key, url or self.url(variant),
                               fingerprint=fingerprint)


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


@pytest.fixture(scope="session", name="rpm_dist")
def rpm_dist_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedDistribution]:
    missing = missing_tools()
    if missing:
        pytest.skip(f"missing host tools: {', '.join(missing)} (run tools/install-system-deps)")
    work = tmp_path_factory.mktemp("rpmdist")
    dist = build_distribution(work)
    with RepoServer(dist.root) as server:
        yield ServedDistribution(dist=dist, base_url=server.url, server=server)


def build_log(path: Path) -> BuildLog:
    """The pipeline's BuildLog, writing to *path*."""
    return BuildLog(path)


def make_context(plan: Plan, *, work: Path, pkg_cache: Path, keyring: Path, log: BuildLog,
                 offline: bool = False) -> BuildContext:
    """BuildContext(...) as the pipeline builds it; the dnf backend does not use
    the pipeline's caching proxy, so an unstarted one is given where the field
    exists."""
    kwargs: dict[str, Any] = {"plan": plan, "pkg_cache": pkg_cache, "work": work,
                              "keyring": keyring, "log": log, "offline": offline}
    if "proxy" in {f.name for f in dataclasses.fields(BuildContext)}:
        pkgcache = importlib.import_module("vzpkg.build.pkgcache")
        kwargs["proxy"] = pkgcache.CachingProxy(pkg_cache, offline=offline)
    return BuildContext(**kwargs)


def vztest_plan(served: ServedDistribution, tmp: Path, variant: str = "good", *,
                set_name: str = "minimal", url: str | None = None,
                fingerprint: str | None = None) -> Plan:
    """The plan of the test template pointed at *variant* (or *url*)."""
    ws = served.workspace(tmp / f"ws-{variant}-{set_name}", variant, url=url,
                          fingerprint=fingerprint)
    settings = load_settings(workspace=ws, cache_dir=tmp / "caches")
    return make_plan(f"vztest-1-x86_64-{set_name}", settings)


def binary_keyring(armored: Sequence[str], dest: Path) -> Path:
    """A binary keyring holding *armored* keys (what the pipeline hands backends)."""
    with Keyring() as kr:
        fprs = [fp for a in armored for fp in kr.key_fingerprints(a)]
        for a in armored:
            kr.gpg.import_keys(a)
        return kr.export_binary(fprs, dest)


def dnf_context(plan: Plan, tmp: Path, *, pkg_cache: Path, offline: bool = False,
                keys: Sequence[str] | None = None) -> BuildContext:
    """A BuildContext as the pipeline makes it: private work dir, a keyring with
    the plan's pinned keys (or *keys*), the shared package cache."""
    work = tmp / "work"
    work.mkdir(parents=True, exist_ok=True)
    keyring = binary_keyring(keys if keys is not None else [k.armored for k in plan.keys],
                             work / "keyring.gpg")
    return make_context(plan, work=work, pkg_cache=pkg_cache, keyring=keyring,
                        log=build_log(tmp / "build.log"), offline=offline)


def processes_with(marker: bytes) -> list[int]:
    """Pids of the processes whose command line contains *marker*."""
    out = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and marker in (d / "cmdline").read_bytes():
                out.append(int(d.name))
        except OSError:
            continue
    return out


def prestarted_dnfs() -> list[int]:
    """Pids of dnf interpreters vzpkg pre-started (see vzpkg.build.backends.dnf)."""
    return processes_with(b"dnf.cli import main")


def entering_ves() -> list[int]:
    """Pids of in-VE script runs made ahead and waiting (see StartedScript)."""
    return processes_with(b"read -r go")
