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
read-only at ``/.vzpkg-build``, unmounted and removed before the tree is cleaned).
For ``--fsys-tarfile FILE`` it hashes FILE and, when a payload of that name
exists, writes it (``cat``); for anything else, or without a payload, it runs the
real ``/usr/bin/dpkg-deb``.  apt has verified
every .deb against the signed indexes before dpkg opens it, exactly as without
this cache, and a payload is only ever used for the very bytes it was made from;
the tree is byte for byte the same (tested).

``VZPKG_PAYLOAD_CACHE=0`` (or ``payload_cache: false``) turns it off.  The
payloads take about three times the space of their packages; ``vzpkg prune``
drops those whose package it drops.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

PAYLOAD_DIR = ".payloads"
VE_DIR = ".vzpkg-build"           # where the helper is mounted inside the build root
CHUNK = 1 << 20
DPKG_DEB = "/usr/bin/dpkg-deb"
DPKG_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"     # apt's default DPkg::Path

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
    value = env.get("VZPKG_PAYLOAD_CACHE")
    if value is not None:
        return value.strip().lower() not in ("0", "no", "false", "off")
    return config.get("payload_cache", True) is not False


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


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

    def make(self, deb: Path, *, nice: int = 19) -> Path | None:
        """Keep *deb*'s payload (if not kept yet); None when dpkg-deb cannot read
        it (nothing is kept then: the build's own dpkg-deb reports the error)."""
        dest = self.path(sha256_file(deb))
        if dest.is_file():
            return dest
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".part-{os.getpid()}-")
        try:
            with os.fdopen(fd, "wb") as out:
                r = subprocess.run(["nice", "-n", str(nice), DPKG_DEB, "--fsys-tarfile",
                                    str(deb)], stdout=out, stderr=subprocess.DEVNULL,
                                   check=False)
                if r.returncode != 0:
                    return None
                out.flush()
                os.fdatasync(out.fileno())
            os.replace(tmp, dest)
            return dest
        finally:
            Path(tmp).unlink(missing_ok=True)

    def remove_stale_parts(self) -> None:
        """Temporary files of processes that are gone (killed builds)."""
        if not self.dir.is_dir():
            return
        for f in self.dir.glob(".part-*"):
            pid = f.name.split("-")[1]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                f.unlink(missing_ok=True)

    def unwanted(self, deb_sha256s: Iterable[str]) -> list[Path]:
        """Every file here but the payloads of the packages in *deb_sha256s*
        (temporary files too: for a caller that holds the cache exclusively)."""
        keep = {f"{s}.tar" for s in deb_sha256s}
        if not self.dir.is_dir():
            return []
        return [f for f in sorted(self.dir.iterdir()) if f.name not in keep and f.is_file()]


class Filler:
    """Makes payloads in a background thread for the packages handed to
    :meth:`add` (the proxy hands it every .deb it serves)."""

    def __init__(self, payloads: Payloads) -> None:
        self.payloads = payloads
        self._queue: queue.Queue[Path | None] = queue.Queue()
        self._seen: set[Path] = set()
        self._lock = threading.Lock()
        self._stop = False
        self.made = 0
        self._thread = threading.Thread(target=self._work, name="vzpkg-payloads",
                                        daemon=True)
        self._thread.start()

    def add(self, deb: Path) -> None:
        with self._lock:
            if deb in self._seen or self._stop:
                return
            self._seen.add(deb)
        self._queue.put(deb)

    def _work(self) -> None:
        while (deb := self._queue.get()) is not None:
            if self._stop:
                continue
            with contextlib.suppress(OSError):
                if self.payloads.make(deb) is not None:
                    self.made += 1

    def close(self, *, finish: bool) -> None:
        """Wait for the queued packages (*finish*) or drop them, then end the
        thread."""
        with self._lock:
            self._stop = not finish
        self._queue.put(None)
        self._thread.join()


class BuildHelper:
    """The ``dpkg-deb`` helper of one build: files in the work directory, the
    PATH and the mmdebstrap hooks that put it in front."""

    def __init__(self, payloads: Payloads, work: Path) -> None:
        self.payloads = payloads
        self.base = work / "payload-helper"
        self.host_bin = self.base / "host"
        self.ve_src = self.base / "ve"
        for d, payload_dir in ((self.host_bin, str(payloads.dir.resolve())),
                               (self.ve_src, f"/{VE_DIR}/payloads")):
            (d / "payloads").mkdir(parents=True, exist_ok=True)
            helper = d / "dpkg-deb"
            helper.write_text(helper_text(payload_dir))
            helper.chmod(0o755)
        payloads.dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def path(self, current: str) -> str:
        """PATH for mmdebstrap: the host helper, then the VE's (a path that
        exists only inside the build root), then *current*."""
        return f"{self.host_bin}:/{VE_DIR}:{current}"

    def mmdebstrap_options(self) -> list[str]:
        """Hooks that mount the helper into the tree and take it out again, and
        the PATH apt gives dpkg (``DPkg::Path``, which replaces the caller's)."""
        return [*self.mmdebstrap_hooks(),
                f'--aptopt=DPkg::Path "/{VE_DIR}:{DPKG_PATH}";']

    def mmdebstrap_hooks(self) -> list[str]:
        ve = f'"$1/{VE_DIR}"'
        setup = (f"mkdir {ve} && mount --bind {_q(self.ve_src)} {ve}"
                 f" && mount --bind -o ro {_q(self.payloads.dir.resolve())} {ve}/payloads"
                 f" && mount -o remount,bind,ro {ve}")
        done = f"umount {ve}/payloads && umount {ve} && rmdir {ve}"
        return [f"--setup-hook={setup}", f"--customize-hook={done}"]


def remove_leftover(root: Path) -> None:
    """The helper's mount point, if a failed hook left it in *root* (the mounts
    themselves die with the build's mount namespace)."""
    d = root / VE_DIR
    if d.is_dir() and not d.is_symlink() and not os.path.ismount(d):
        shutil.rmtree(d)


def _q(path: Path) -> str:
    import shlex
    return shlex.quote(str(path))
