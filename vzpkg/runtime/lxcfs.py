"""A VE sees its own limits in /proc: lxcfs's files bound over the VE's.

lxcfs (Debian's ``lxcfs`` package) is a FUSE file system, run once per host, whose
``proc/meminfo``, ``proc/cpuinfo``, ``proc/stat``, ``proc/uptime``,
``proc/loadavg``, ``proc/swaps`` and ``sys/devices/system/cpu/online`` answer each
reader with the figures of the reader's own cgroup: its memory limit, its cpuset
and CPU quota, the start time of its pid namespace's init, its load.  So ``free``,
``top``, ``nproc`` (where it reads /sys) and ``uptime`` tell a VE's truth.

At start, the VE's pid 1 clones those files' mounts (``open_tree``, read-only,
detached) before the host's root leaves its mount namespace, and attaches them over
the VE's own /proc and /sys entries (:func:`bind`) once those are mounted; the
host's /proc is never changed.  A host without a
running lxcfs starts its VEs without it: they see the host's figures, and
``vzctl start`` warns (:func:`missing`).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from vzpkg.core import mountinfo as mounttable
from vzpkg.runtime import idmap

DEFAULT_DIR = Path("/var/lib/lxcfs")
FSTYPE = "fuse.lxcfs"
# what lxcfs virtualises, relative to its mount and to the VE's root
FILES = ("proc/meminfo", "proc/cpuinfo", "proc/stat", "proc/uptime", "proc/loadavg",
         "proc/swaps", "proc/diskstats", "sys/devices/system/cpu/online")
START_HINT = ("install Debian's lxcfs package and start it: systemctl enable --now lxcfs "
              "(or run `lxcfs --enable-cfs -l /var/lib/lxcfs`); VEs started after that "
              "see their own figures")


def find(mountinfo: Path = Path("/proc/self/mountinfo")) -> Path | None:
    """Where lxcfs is mounted on this host, or None."""
    with contextlib.suppress(OSError):
        for m in mounttable.read(mountinfo):
            if m.fstype == FSTYPE:
                return Path(m.point)
    return None


def missing(mountinfo: Path = Path("/proc/self/mountinfo")) -> str:
    """A warning when VEs started now would see the host's /proc figures, else ""."""
    if find(mountinfo) is not None:
        return ""
    return ("warning: lxcfs is not running: the VE's /proc/meminfo, cpuinfo, stat, "
            "uptime, loadavg and swaps show the host's figures (free, nproc and uptime "
            "too)")


def open_files(where: Path | None) -> list[tuple[int, str]]:
    """Detached read-only copies of lxcfs's files under *where* (made by pid 1 while
    the host's root is still there), with the VE path each covers.  A file lxcfs does
    not offer (an older lxcfs, or the daemon gone since) is left out."""
    out: list[tuple[int, str]] = []
    if where is None:
        return out
    ro = (idmap.MOUNT_ATTR_RDONLY | idmap.MOUNT_ATTR_NOSUID | idmap.MOUNT_ATTR_NODEV
          | idmap.MOUNT_ATTR_NOEXEC)
    for rel in FILES:
        if not os.path.isfile(where / rel):
            continue
        with contextlib.suppress(OSError):
            out.append((idmap.detached_clone(where / rel, ro), rel))
    return out


def bind(files: list[tuple[int, str]], root: str = "/") -> None:
    """Attach each of *files* over its path under *root* (where the VE's proc and
    sysfs are mounted: before or after pivot_root alike); a path the VE's proc or
    sysfs does not have is skipped.  The descriptors are closed."""
    try:
        for fd, rel in files:
            target = os.path.join(root, rel)
            if os.path.isfile(target) and not os.path.islink(target):
                idmap.attach(fd, Path(target))
    finally:
        for fd, _ in files:
            with contextlib.suppress(OSError):
                os.close(fd)
