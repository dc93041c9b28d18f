"""A running VE described to CRIU, and put back around what CRIU restores.

Three parts of a VE are not CRIU's to save, and are made again as at start: the
VE's /dev (a tmpfs whose device nodes a user namespace cannot make; CRIU binds
the one vzctl stages), its cgroup2 view (a bind of the VE's delegated leaf) and
the host end of its veth pair.  This module names them to CRIU as external
mounts (``EXT_*``, lxcfs's files), and reads from the kernel what a restore needs
that CRIU does not keep: the console's terminal, the mounts the VE made in its
/dev, the cgroups it made below its leaf and which process was in which.  The
dump's manifest carries these (:mod:`chkpnt`); :mod:`restore` reads them back as
a :class:`DevExtra`.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from vzpkg.core import mountinfo
from vzpkg.runtime import lxcfs

EXT_DEV = "vzdev"
EXT_CG = "vzcg"
EXT_CONSOLE = "vzconsole"


def _lxcfs_key(rel: str) -> str:
    return "vzlxcfs-" + rel.replace("/", "-")


def lxcfs_dump_externals(pid: int) -> list[str]:
    """lxcfs's files bound over the VE's /proc and /sys entries (lxcfs.FILES) are the
    host's FUSE mount, not the VE's: CRIU is told they are external, keyed by name."""
    try:
        points = {m.point for m in mountinfo.read(f"/proc/{pid}/mountinfo")}
    except OSError:
        return []
    return [a for rel in lxcfs.FILES if "/" + rel in points
            for a in ("--external", f"mnt[/{rel}]:{_lxcfs_key(rel)}")]


def lxcfs_restore_externals() -> list[str]:
    """Where each lxcfs key of a dump is bound again: lxcfs's file when lxcfs runs,
    else the host's own entry (as a VE started without lxcfs sees it)."""
    where = lxcfs.find()
    out: list[str] = []
    for rel in lxcfs.FILES:
        src = where / rel if where is not None else Path("/") / rel
        out += ["--external", f"mnt[{_lxcfs_key(rel)}]:{src}"]
    return out


@dataclass(frozen=True)
class DevExtra:
    """What a restored VE's fresh /dev needs beyond the standard set."""

    ttys: list[str]       # CRIU's keys of the console terminal (now /dev/null)
    dirs: list[str]       # mount points the VE made directly in /dev (mqueue, ...)
    systemd: bool         # its init is systemd: /dev/log leads to journald
    cgroups: list[str]    # the VE's own cgroup2 groups below its leaf (systemd's)
    procs: dict[str, str]  # the VE's pid (in the VE) -> its group, relative


def relpath(p: object) -> bool:
    return isinstance(p, str) and bool(p) and all(plain(c) for c in p.split("/"))


def regroup(leaf: Path, procs: list[int], where: dict[str, str]) -> None:
    """Put each restored process back in the group of the VE's own it was in."""
    for pid in procs:
        with contextlib.suppress(OSError, StopIteration):
            status = Path(f"/proc/{pid}/status").read_text()
            nspid = next(ln for ln in status.splitlines() if ln.startswith("NSpid:")
                         ).split()[-1]
            rel = where.get(nspid)
            if rel:
                (leaf / rel / "cgroup.procs").write_text(str(pid))


def cgroup_tree(leaf: Path, procs: list[int]) -> tuple[list[str], dict[str, str]]:
    """The groups the VE made below its cgroup2 leaf (kernel directories, walked on
    the host's cgroup2 file system), and which group each VE process is in (by its
    pid in the VE, which CRIU keeps)."""
    tree = sorted(str(d.relative_to(leaf)) for d in leaf.rglob("*")
                  if d.is_dir() and not d.is_symlink())
    where: dict[str, str] = {}
    prefix = "0::/" + str(leaf.relative_to(_cg2_mount(leaf)))
    for pid in procs:
        with contextlib.suppress(OSError, ValueError, IndexError):
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
            line = next(ln for ln in lines if ln.startswith("0::"))
            status = Path(f"/proc/{pid}/status").read_text()
            nspid = next(ln for ln in status.splitlines() if ln.startswith("NSpid:")
                         ).split()[-1]
            rel = line[len(prefix):].strip("/") if line.startswith(prefix) else ""
            if rel:
                where[nspid] = rel
    return tree, where


def _cg2_mount(path: Path) -> Path:
    """The cgroup2 mount *path* is in (/sys/fs/cgroup or /sys/fs/cgroup/unified)."""
    for cand in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")):
        if path.is_relative_to(cand) and (cand / "cgroup.procs").exists():
            return cand
    return Path("/sys/fs/cgroup")


def plain(name: object) -> bool:
    return (isinstance(name, str) and bool(name) and "/" not in name
            and name not in (".", "..") and len(name) < 64)


def dev_mountpoints(pid: int) -> list[str]:
    """Names of the mounts directly in the VE's /dev other than vzctl's own, from
    the kernel's mountinfo of its init (mqueue, hugepages under systemd)."""
    names: set[str] = set()
    with contextlib.suppress(OSError):
        for m in mountinfo.read(f"/proc/{pid}/mountinfo"):
            if m.point.startswith("/dev/"):
                name = m.point[5:]
                if plain(name) and name not in ("console", "pts", "shm"):
                    names.add(name)
    return sorted(names)


def console_ttys(pid: int, procs: list[int]) -> list[str]:
    """CRIU's names (``tty[RDEV:DEV]``) of the VE's console terminal, as its
    processes hold it: pty 0 of the VE's own devpts, made by its init at start,
    whose master the event helper holds outside the VE (CRIU cannot dump a pty
    without its master; it is marked external, and a restored VE gets /dev/null
    in its place).  Found through the processes' open files (the kernel's own
    links in /proc, never a path in the VE)."""
    try:
        ns = os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return []
    keys: set[str] = set()
    for entry in map(str, procs or [pid]):
        try:
            if os.stat(f"/proc/{entry}/ns/pid").st_ino != ns:
                continue
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                st = os.stat(f"/proc/{entry}/fd/{fd}")
                if 136 <= os.major(st.st_rdev) <= 143 and os.minor(st.st_rdev) == 0:
                    keys.add(f"tty[{st.st_rdev:x}:{st.st_dev:x}]")
    return sorted(keys)
