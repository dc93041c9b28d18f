"""User-namespace id ranges and idmapped mounts.

Each VE's root is a range of 65536 unprivileged host ids (``VE_IDMAP="BASE:COUNT"``
in CTID.conf), taken from the pool in vz.conf (``VE_IDMAP_POOL``) so that no two VEs
share one.  The files of a private area stay as the cache has them (0..65535): the
VE's root is mounted through an *idmapped mount* (``mount_setattr`` with
``MOUNT_ATTR_IDMAP``), which shows file owner N as host id BASE+N, and so as N again
inside the VE's user namespace.  Creating a VE needs no pass over its files.

overlayfs itself cannot be idmapped, but its layers can: the overlay is mounted on
idmapped clones of the lower and upper layers, by a process whose file-system ids
are the VE's root (the overlay does its own work in the upper layer with its
mounter's credentials).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vzpkg.core.errors import ConfigError, VeError
from vzpkg.runtime import libc

SIZE = 65536
DEFAULT_POOL = "104857600:1000013824"     # 15259 VEs of 65536 ids, from 1600 * 65536

# syscall numbers shared by every architecture since Linux 5.2 / 5.12
_NR_OPEN_TREE = 428
_NR_MOVE_MOUNT = 429
_NR_MOUNT_SETATTR = 442
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_AT_RECURSIVE = 0x8000
_OPEN_TREE_CLONE = 1
_OPEN_TREE_CLOEXEC = os.O_CLOEXEC
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOVE_MOUNT_T_EMPTY_PATH = 0x40
_MOUNT_ATTR_IDMAP = 0x00100000

_sys = ctypes.CDLL(None, use_errno=True)
_sys.syscall.restype = ctypes.c_long


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _call(what: str, *args: object) -> int:
    ret = int(_sys.syscall(*args))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


@dataclass(frozen=True, order=True)
class IdRange:
    """Host ids ``base`` .. ``base + count - 1``; the VE sees them as 0 .. count-1."""

    base: int
    count: int = SIZE

    @property
    def end(self) -> int:
        return self.base + self.count

    def overlaps(self, other: IdRange) -> bool:
        return self.base < other.end and other.base < self.end

    def __str__(self) -> str:
        return f"{self.base}:{self.count}"

    def map_line(self) -> str:
        """A line for /proc/PID/uid_map and gid_map."""
        return f"0 {self.base} {self.count}\n"

    @classmethod
    def parse(cls, text: str, *, where: str) -> IdRange:
        base, sep, count = text.partition(":")
        try:
            r = cls(int(base), int(count) if sep else SIZE)
        except ValueError:
            raise ConfigError(f"{where}: {text!r} is not BASE:COUNT",
                              hint='write it as two numbers, e.g. "100000000:65536"') from None
        if r.base <= 0 or r.count <= 0 or r.end > 1 << 32:
            raise ConfigError(f"{where}: {text!r} is out of range",
                              hint="BASE above 0, COUNT above 0, BASE+COUNT at most 2^32")
        return r


def allocate(used: Iterable[IdRange], pool: IdRange, size: int = SIZE) -> IdRange:
    """The lowest range of *size* ids in *pool*, aligned to *size*, that overlaps
    none of *used*."""
    taken = sorted(used)
    start = -(-pool.base // size) * size
    while start + size <= pool.end:
        cand = IdRange(start, size)
        clash = next((u for u in taken if u.overlaps(cand)), None)
        if clash is None:
            return cand
        start = -(-clash.end // size) * size
    raise VeError(f"no free range of {size} ids left in the pool {pool}",
                  hint="give VE_IDMAP_POOL in vz.conf more ids, or destroy unused VEs")


@contextlib.contextmanager
def mapping_ns(ids: IdRange) -> Iterator[int]:
    """An fd of a fresh user namespace that maps 0..count-1 to *ids* (uid and gid):
    what an idmapped mount takes.  No process stays in it."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(w)
            libc.unshare(libc.CLONE_NEWUSER)
            os.read(r, 1)               # until the parent has opened our namespace
        finally:
            os._exit(0)
    os.close(r)
    fd = -1
    try:
        own = os.readlink("/proc/self/ns/user")
        for _ in range(20000):          # until the child has unshared (microseconds)
            if os.readlink(f"/proc/{child}/ns/user") != own:
                break
            os.sched_yield()
        else:
            raise VeError("could not make a user namespace for the VE's id mapping")
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{child}/{name}", "w", encoding="ascii") as f:
                f.write(ids.map_line())
        fd = os.open(f"/proc/{child}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        yield fd
    finally:
        with contextlib.suppress(OSError):
            os.write(w, b"1")
        os.close(w)
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        if fd >= 0:
            os.close(fd)


MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4


def idmapped_clone(path: Path | str, userns_fd: int, attrs: int = 0) -> int:
    """A detached, idmapped copy of the mount tree at *path* (with the extra mount
    *attrs*, e.g. MOUNT_ATTR_NODEV); returns its fd."""
    fd = _call(f"open_tree {path}", _NR_OPEN_TREE, _AT_FDCWD, os.fsencode(str(path)),
               _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC | _AT_RECURSIVE)
    attr = _MountAttr(_MOUNT_ATTR_IDMAP | attrs, 0, 0, userns_fd)
    try:
        _call(f"mount_setattr {path} (idmap)", _NR_MOUNT_SETATTR, fd, b"",
              _AT_EMPTY_PATH | _AT_RECURSIVE, ctypes.byref(attr), ctypes.sizeof(attr))
    except BaseException:
        os.close(fd)
        raise
    return fd


MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOEXEC = 0x8


def detached_clone(path: Path | str, attrs: int = 0) -> int:
    """A detached copy of the mount at *path* (a file or directory; not recursive),
    with the extra mount *attrs* (e.g. MOUNT_ATTR_RDONLY); returns its fd.  It can
    be attached (:func:`attach`) after the caller's root has changed."""
    fd = _call(f"open_tree {path}", _NR_OPEN_TREE, _AT_FDCWD, os.fsencode(str(path)),
               _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC)
    attr = _MountAttr(attrs, 0, 0, 0)
    try:
        if attrs:
            _call(f"mount_setattr {path}", _NR_MOUNT_SETATTR, fd, b"", _AT_EMPTY_PATH,
                  ctypes.byref(attr), ctypes.sizeof(attr))
    except BaseException:
        os.close(fd)
        raise
    return fd


def attach(tree_fd: int, target: Path | int) -> None:
    """Mount the detached tree *tree_fd* on *target* (a path, or a descriptor of the
    directory, e.g. an O_PATH one)."""
    if isinstance(target, int):
        _call("move_mount", _NR_MOVE_MOUNT, tree_fd, b"", target, b"",
              _MOVE_MOUNT_F_EMPTY_PATH | _MOVE_MOUNT_T_EMPTY_PATH)
    else:
        _call(f"move_mount {target}", _NR_MOVE_MOUNT, tree_fd, b"", _AT_FDCWD,
              os.fsencode(str(target)), _MOVE_MOUNT_F_EMPTY_PATH)


def mount_idmapped(source: Path, target: Path | int, ids: IdRange, attrs: int = 0) -> None:
    """Mount *source* on *target* so that file owner N shows as host id base+N."""
    with mapping_ns(ids) as ns:
        fd = idmapped_clone(source, ns, attrs)
        try:
            attach(fd, target)
        finally:
            os.close(fd)


def mount_overlay_idmapped(lower: Path, upper: Path, work: Path, target: Path,
                           ids: IdRange, flags: int = 0) -> None:
    """An overlay of *lower* under *upper* on *target*, both layers idmapped to *ids*.
    *upper* and *work* must be on the same file system (the overlay needs that)."""
    with mapping_ns(ids) as ns:
        lo = idmapped_clone(lower, ns)
        try:
            up = idmapped_clone(upper.parent, ns)
            try:
                data = (f"lowerdir=/proc/self/fd/{lo},upperdir=/proc/self/fd/{up}/{upper.name},"
                        f"workdir=/proc/self/fd/{up}/{work.name}")
                _as_ids(ids.base,
                        lambda: libc.mount("overlay", str(target), "overlay", flags, data))
            finally:
                os.close(up)
        finally:
            os.close(lo)


def _as_ids(fsid: int, action: object) -> None:
    """Run *action* in a child whose file-system ids are *fsid* and whose effective
    capabilities stay those of host root (the overlay keeps its mounter's
    credentials for its own work in the upper layer)."""
    assert callable(action)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            libc.setfsids(fsid)
            action()
            os._exit(0)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.write(w, str(exc).encode(errors="replace")[:2000])
            os._exit(1)
    os.close(w)
    try:
        msg = os.read(r, 2000)
    finally:
        os.close(r)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise OSError(msg.decode(errors="replace") or f"status {status}")


def supported(path: Path) -> bool:
    """Whether the kernel and *path*'s file system take an idmapped mount."""
    try:
        with mapping_ns(IdRange(DEFAULT_POOL_BASE, SIZE)) as ns:
            os.close(idmapped_clone(path, ns))
        return True
    except OSError:
        return False


DEFAULT_POOL_BASE = IdRange.parse(DEFAULT_POOL, where="built-in pool").base
