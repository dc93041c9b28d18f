"""Unpacked package payloads: dpkg-deb's decompression done once per package.

A Debian build spends a third of its time in ``dpkg-deb --fsys-tarfile``,
decompressing ``data.tar.xz`` (single-threaded xz): once for each essential
package when mmdebstrap extracts them, again when dpkg installs them, and once
for every other package.  The tar stream it writes depends on nothing but the
bytes of the .deb.  So the package cache keeps it, as ``.payloads/<sha256 of
the .deb>.tar``, made on the host by the host's own ``dpkg-deb`` from a package
the build downloaded (in a background process at the lowest CPU priority, while
dpkg works on one core), written to a temporary name, fsynced and renamed.

During a build a small ``dpkg-deb`` comes first on mmdebstrap's PATH and on the
PATH apt gives dpkg (``DPkg::Path``), on the host and inside the VE (bind-mounted
read-only at ``/.vzpkg-build`` by the build's sandbox, with the tree's other
mounts, and unmounted and removed before the tree is cleaned).
For ``--fsys-tarfile FILE`` it hashes FILE and, when a payload of that name
exists, writes it (``cat``); for anything else, or without a payload, it runs the
real ``/usr/bin/dpkg-deb``.  apt has verified every .deb against the signed
indexes before dpkg opens it, exactly as without this cache, and a payload is
only ever used for the very bytes it was made from; the tree is byte for byte
the same (tested).

``VZPKG_PAYLOAD_CACHE=0`` (or ``payload_cache: false``) turns it off.  The
payloads take about four times the space of their packages; ``vzpkg prune``
drops those whose package it drops.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from vzpkg.core.files import sha256_file
from vzpkg.core.settings_table import env_name

PAYLOAD_DIR = ".payloads"
VIEWS = ".views"                  # per-build directories of links, under PAYLOAD_DIR
VE_DIR = ".vzpkg-build"           # where the helper is mounted inside the build root
CHUNK = 1 << 20
DPKG_DEB = "/usr/bin/dpkg-deb"
DPKG_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"     # apt's default DPkg::Path
MIN_FREE = 2 << 30               # payloads are not made on a disk with less free

# one positional file after --fsys-tarfile is how dpkg and mmdebstrap ask; the
# real dpkg-deb handles everything else, and every error
HELPER = """#!/bin/sh
# vzpkg build helper (never in a cache): dpkg-deb --fsys-tarfile from the
# payload cache when it holds the payload of exactly this file's bytes
if [ "$#" = 2 ] && [ "$1" = --fsys-tarfile ] && [ -f "$2" ]; then
    sum=$(sha256sum < "$2") && sum=${sum%% *} &&
        [ -f "@DIR@/$sum.tar" ] && exec cat -- "@DIR@/$sum.tar"
fi
exec @DPKG_DEB@ "$@"
"""


def enabled(env: Mapping[str, str], config: Mapping[str, Any]) -> bool:
    """Whether builds use the payload cache: on unless VZPKG_PAYLOAD_CACHE=0 or
    ``payload_cache: false``."""
    value = env.get(env_name("payload_cache"))
    if value is not None:
        return value.strip().lower() not in ("0", "no", "false", "off")
    return config.get("payload_cache", True) is not False


def helper_text(payload_dir: str) -> str:
    return HELPER.replace("@DIR@", payload_dir).replace("@DPKG_DEB@", DPKG_DEB)


class Payloads:
    """The payload directory of one package cache."""

    def __init__(self, pkg_cache: Path) -> None:
        self.dir = pkg_cache / PAYLOAD_DIR

    def path(self, deb_sha256: str) -> Path:
        return self.dir / f"{deb_sha256}.tar"

    def has(self, deb: Path) -> bool:
        return self.path(sha256_file(deb)).is_file()

    def make(self, deb: Path, *, nice: int = 19) -> str | None:
        """Keep *deb*'s payload unless it is kept already; the package's sha256
        (the payload's name), or None when dpkg-deb cannot read it (nothing is
        kept then: the build's own dpkg-deb reports the error) or the disk is
        nearly full.  The hash and the payload come from one open file, whatever
        happens to the path."""
        with deb.open("rb") as f:
            sha = sha256_file(f)
            dest = self.path(sha)
            if dest.is_file():
                return sha
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not self.room():
                return None
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".part-{os.getpid()}-")
            try:
                with os.fdopen(fd, "wb") as out:
                    r = subprocess.run(["nice", "-n", str(nice), DPKG_DEB, "--fsys-tarfile",
                                        f"/dev/fd/{f.fileno()}"], stdout=out,
                                       stderr=subprocess.DEVNULL, pass_fds=(f.fileno(),),
                                       check=False)
                    if r.returncode != 0:
                        return None
                    out.flush()
                    os.fdatasync(out.fileno())
                os.replace(tmp, dest)
                return sha
            finally:
                Path(tmp).unlink(missing_ok=True)

    def room(self) -> bool:
        """Whether the disk has room for more: a cache must not take the space
        the build's own tarball needs (MIN_FREE, or 5 % of the file system)."""
        st = os.statvfs(self.dir)
        free = st.f_bavail * st.f_frsize
        return free >= max(MIN_FREE, st.f_blocks * st.f_frsize // 20)

    def remove_stale(self) -> None:
        """Temporary files and build views of processes that are gone (killed
        builds)."""
        for f in (*self.dir.glob(".part-*"), *self.dir.glob(f"{VIEWS}/*")):
            pid = f.name.removeprefix(".part-").split("-")[0]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                if f.is_dir():
                    shutil.rmtree(f, ignore_errors=True)
                else:
                    f.unlink(missing_ok=True)

    def unwanted(self, deb_sha256s: Iterable[str]) -> list[Path]:
        """Every file here but the payloads of the packages in *deb_sha256s*
        (temporary files too: for a caller that holds the cache exclusively)."""
        keep = {f"{s}.tar" for s in deb_sha256s}
        if not self.dir.is_dir():
            return []
        return [f for f in sorted(self.dir.iterdir()) if f.name not in keep and f.is_file()]


class BuildPayloads:
    """The payload cache as one build uses it.

    The build sees a view of its own: a directory of hard links to the payloads
    of the packages this build's proxy served, and no others (payloads of other
    templates' repositories stay out of its VE).  The proxy hands every .deb it
    serves to :meth:`add`: one thread hashes it and links a kept payload into the
    view at once; another makes the payloads not kept yet, at the lowest CPU
    priority, and links them when done.  dpkg-deb runs as usual for a package
    whose payload is not in the view yet.
    """

    def __init__(self, payloads: Payloads, work: Path) -> None:
        self.payloads = payloads
        payloads.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        payloads.remove_stale()
        (payloads.dir / VIEWS).mkdir(mode=0o700, exist_ok=True)
        self.view = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-",
                                          dir=payloads.dir / VIEWS)).resolve()
        self.base = work / "payload-helper"
        self.host_bin = self.base / "host"
        self.ve_src = self.base / "ve"
        for d, payload_dir in ((self.host_bin, str(self.view)),
                               (self.ve_src, f"/{VE_DIR}/payloads")):
            d.mkdir(parents=True, exist_ok=True)
            helper = d / "dpkg-deb"
            helper.write_text(helper_text(payload_dir))
            helper.chmod(0o755)
        (self.ve_src / "payloads").mkdir()
        self.ready = 0          # packages whose payload was kept already
        self.made = 0           # payloads made by this build
        self._seen: set[Path] = set()
        self._lock = threading.Lock()
        self._stop = False
        self._hash: queue.Queue[Path | None] = queue.Queue()
        self._make: queue.Queue[Path | None] = queue.Queue()
        self._threads = [threading.Thread(target=fn, name=f"vzpkg-payloads-{n}", daemon=True)
                         for n, fn in (("link", self._linker), ("make", self._maker))]
        for t in self._threads:
            t.start()

    # -- what the build and the proxy call ---------------------------------------
    def add(self, deb: Path) -> None:
        with self._lock:
            if deb in self._seen or self._stop:
                return
            self._seen.add(deb)
        self._hash.put(deb)

    def path(self, current: str) -> str:
        """PATH for mmdebstrap: the host helper, then the VE's (a path that
        exists only inside the build root), then *current*."""
        return f"{self.host_bin}:/{VE_DIR}:{current}"

    def mmdebstrap_options(self) -> list[str]:
        """The PATH apt gives dpkg (``DPkg::Path``, which replaces the caller's)."""
        return [f'--aptopt=DPkg::Path "/{VE_DIR}:{DPKG_PATH}";']

    def ve_binds(self) -> list[tuple[str, str, bool]]:
        """The helper and the view as the sandbox mounts them in the tree:
        (host path, path in the tree, read-only)."""
        return [(str(self.ve_src), VE_DIR, True), (str(self.view), f"{VE_DIR}/payloads", True)]

    def close(self, *, finish: bool) -> None:
        """Make the payloads still queued (*finish*) or drop them; remove the view."""
        with self._lock:
            self._stop = not finish
        self._hash.put(None)
        self._threads[0].join()
        self._make.put(None)
        self._threads[1].join()
        shutil.rmtree(self.view, ignore_errors=True)

    # -- the two threads -----------------------------------------------------------
    def _link(self, sha: str) -> None:
        with contextlib.suppress(FileExistsError):
            os.link(self.payloads.path(sha), self.view / f"{sha}.tar")

    def _linker(self) -> None:
        while (deb := self._hash.get()) is not None:
            if self._stop:
                continue
            try:
                sha = sha256_file(deb)
                if self.payloads.path(sha).is_file():
                    self._link(sha)
                    self.ready += 1
                else:
                    self._make.put(deb)
            except OSError:
                continue

    def _maker(self) -> None:
        while (item := self._make.get()) is not None:
            if self._stop:
                continue
            with contextlib.suppress(OSError):
                sha = self.payloads.make(item)
                if sha is not None:
                    self._link(sha)
                    self.made += 1


def remove_leftover(root: Path) -> None:
    """The helper's mount point, if a failed hook left it in *root* (the mounts
    themselves die with the build's mount namespace)."""
    d = root / VE_DIR
    if d.is_dir() and not d.is_symlink() and not os.path.ismount(d):
        shutil.rmtree(d)
