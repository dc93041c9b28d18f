"""Fixtures for runtime tests: a tiny busybox-based cache and a temporary VZ_ROOT."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vzpkg.runtime.ve import Runtime

BUSYBOX = Path("/bin/busybox")
BUSYBOX_NAME = "busybox-1-x86_64-minimal"

# busybox has no chpasswd; the VE ships one, as a distribution would.
CHPASSWD = r"""#!/bin/sh
# chpasswd for a busybox VE: USER:PASSWORD lines on stdin.
set -e
while IFS=: read -r user pass; do
  [ -n "$user" ] || continue
  grep -q "^$user:" /etc/shadow || { echo "chpasswd: no user $user" >&2; exit 1; }
  hash=$(mkpasswd -m sha512 "$pass")
  sed -i "s|^$user:[^:]*:|$user:$hash:|" /etc/shadow
done
"""


def make_busybox_tree(root: Path) -> Path:
    """A runnable root: busybox and its applets, passwd files, os-release.  It has no
    /sbin/init (busybox's init wants ttys and an inittab): vzctl runs its own shell
    init in such a tree."""
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc/network", "proc", "sys", "dev",
              "run", "tmp", "root", "var/log", "home"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    applets = subprocess.run([str(BUSYBOX), "--list-full"], capture_output=True, text=True,
                             check=True).stdout.split()
    for a in applets:
        if a in ("sbin/init", "linuxrc"):
            continue
        link = root / a
        if not link.exists() and not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(root / "bin/busybox", link.parent))
    (root / "usr/sbin/chpasswd").write_text(CHPASSWD)
    (root / "usr/sbin/chpasswd").chmod(0o755)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                     "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    (root / "etc/group").write_text("root:x:0:\ntty:x:5:\nnogroup:x:65534:\n")
    (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\nnobody:*:19000::::::\n")
    (root / "etc/shadow").chmod(0o640)
    (root / "etc/os-release").write_text(
        'NAME="Busybox test"\nID=busybox\nVERSION_ID="1"\nPRETTY_NAME="Busybox test 1"\n')
    (root / "etc/hostname").write_text("localhost\n")
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n")
    return root


def make_busybox_cache(cache_dir: Path, name: str = BUSYBOX_NAME) -> Path:
    """Pack the busybox tree and ``vzpkg import`` it as cache *name* (needs root)."""
    from vzpkg.store.cachestore import CacheStore
    from vzpkg.store.importer import import_tarball
    store = CacheStore(cache_dir)
    found = store.tarball(name)
    if found is not None:
        return found
    cache_dir.mkdir(parents=True, exist_ok=True)
    work = cache_dir / f".{name}.src"
    shutil.rmtree(work, ignore_errors=True)
    make_busybox_tree(work / "tree")
    src = work / "rootfs.tar.gz"
    subprocess.run(["tar", "-czf", str(src), "--numeric-owner", "-C", str(work / "tree"),
                    "."], check=True)
    try:
        import_tarball(store, src, name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    tb = store.tarball(name)
    assert tb is not None
    return tb


def debian_cache(cache_dir: Path) -> str | None:
    """The name of a real Debian cache in *cache_dir*, if the builder made one."""
    from vzpkg.store.cachestore import CacheStore
    from vzpkg.store.manifest import expand_name
    for short in ("debian-12", "debian-13", "debian-11"):
        name = expand_name(short)
        if CacheStore(cache_dir).tarball(name) is not None:
            return name
    return None


REPO = Path(__file__).resolve().parents[1]


def find_debian_cache() -> tuple[Path, str] | None:
    """A real Debian cache made by the builder: $VZPKG_CACHE_DIR or the repo's caches/."""
    dirs = [Path(os.environ["VZPKG_CACHE_DIR"])] if os.environ.get("VZPKG_CACHE_DIR") else []
    dirs.append(REPO / "caches")
    for d in dirs:
        name = debian_cache(d) if d.is_dir() else None
        if name:
            return d, name
    return None


def runtime_for(base: Path) -> Runtime:
    """A Runtime on a fresh VZ_ROOT under *base*, with the busybox cache available."""
    from vzpkg.runtime.paths import VzPaths
    from vzpkg.runtime.ve import Runtime
    caches = base / "caches"
    make_busybox_cache(caches)
    return Runtime(VzPaths(base / "vz"), [caches])


def destroy_all(rt: Runtime) -> None:
    for ctid in rt.ctids():
        with contextlib.suppress(Exception):  # a broken VE must not hide the failure
            rt.destroy(ctid)


def sh(rt: Runtime, ctid: int, command: str, stdin: bytes = b"") -> tuple[int, str]:
    """Run *command* with /bin/sh -c in the VE: (exit status, stdout+stderr)."""
    from vzpkg.runtime.vset import capture
    return capture(rt, ctid, ["/bin/sh", "-c", command], stdin)


def enter_session(rt: Runtime, ctid: int, typed: bytes, timeout: float = 20,
                  command: str = "enter") -> tuple[int | None, str]:
    """Run ``vzctl enter CTID`` (or *command*) on a pty, type *typed*, read until it ends:
    (wait status, or None if it did not exit within 10 s after the output, and
    everything it printed).  A vzctl that does not exit is killed."""
    import select
    import sys
    import time
    vzctl = str(Path(sys.executable).parent / "vzctl")
    env = {**os.environ, "VZ_ROOT": str(rt.paths.root), "TERM": "dumb"}
    pid, fd = os.forkpty()
    if pid == 0:
        try:
            os.execve(vzctl, [vzctl, command, str(ctid)], env)
        finally:
            os._exit(127)
    out = b""
    try:
        os.write(fd, typed)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if select.select([fd], [], [], 0.5)[0]:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
        deadline = time.monotonic() + 10
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        status: int | None = done[1] if done[0] else None
        if status is None:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    finally:
        os.close(fd)
    return status, out.decode(errors="replace")


def vzctl_cli(rt: Runtime, *args: str, stdin: str | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The vzctl command (a new process, as an administrator runs it) on *rt*'s root."""
    env = {**os.environ, "VZ_ROOT": str(rt.paths.root),
           "VZPKG_CACHE_DIR": str(rt.cache_dirs[0])}
    return subprocess.run([str(Path(sys.executable).parent / "vzctl"), *args], env=env,
                          input=stdin, capture_output=True, text=True, check=False,
                          timeout=timeout)


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.05)


# systemd units allowed to fail in a VE started by vzctl start (README, "Running
# VEs"): none
KNOWN_FAILED_UNITS: frozenset[str] = frozenset()


def failed_units(text: str) -> set[str]:
    """The unit names of ``systemctl --failed --plain --no-legend`` output."""
    return {ln.split()[0] for ln in text.splitlines() if ln.strip()}


def copy_host_tools(private: Path, names: list[str]) -> None:
    """Copy the host's programs *names* (found on PATH) into a (busybox) VE's
    ``/usr/local/bin``, and the shared libraries ``ldd`` names for them at the same
    paths: procps' free and uptime, coreutils' nproc, util-linux's flock, which read
    /proc the way a distribution's do (busybox's use sysinfo()).  Call them by full
    path: busybox's sh runs its own applet of the same name first."""
    files: set[str] = set()
    for name in names:
        exe = shutil.which(name)
        assert exe is not None, f"the host has no {name}"
        out = subprocess.run(["ldd", exe], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            for word in line.split():
                if word.startswith("/"):
                    files.add(word)
                    files.add(os.path.realpath(word))
    for f in sorted(files):
        dest = private / f.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            shutil.copy2(f, dest)
    for name in names:     # first on the VE's PATH, before busybox's applets
        dest = private / "usr/local/bin" / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.unlink(missing_ok=True)
        shutil.copy2(os.path.realpath(shutil.which(name) or name), dest)
