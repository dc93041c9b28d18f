"""The VE's files on disk: the ``plain`` and ``overlay`` layouts.

plain
    The cache is unpacked into ``VZ_ROOT/private/CTID``; it is bind-mounted on
    ``VZ_ROOT/root/CTID`` while the VE runs.
overlay
    The cache is unpacked once into ``VZ_ROOT/shared/SHA256``, shared read-only
    by every VE made from it.  ``private/CTID`` holds ``upper/``, ``work/`` and ``lower``, a
    symlink to the shared copy; the overlay is mounted on ``root/CTID``.  The
    shared copy is removed when the last VE using it is destroyed.

Either way the tarball is hashed and checked against its manifest before a byte
of it is unpacked, and what is unpacked is the file that was hashed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path

from vzpkg.errors import VeError
from vzpkg.fstree import remove_tree
from vzpkg.runtime import libc
from vzpkg.runtime.caches import CacheRef
from vzpkg.runtime.paths import VzPaths


class Layout(StrEnum):
    PLAIN = "plain"
    OVERLAY = "overlay"


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def create(paths: VzPaths, ctid: int, cache: CacheRef, layout: Layout) -> None:
    """Make the VE's private area; on any failure nothing is left behind."""
    private = paths.private(ctid)
    try:
        private.mkdir()
    except FileExistsError:
        raise VeError(f"private area {private} already exists",
                      hint=f"destroy VE {ctid} first, or remove that directory") from None
    try:
        if layout is Layout.PLAIN:
            private.chmod(0o755)
            cache.unpack_into(private)      # checked against the manifest first
        else:
            shared = ensure_shared(paths, cache)
            (private / "upper").mkdir()
            (private / "work").mkdir()
            (private / "lower").symlink_to(os.path.relpath(shared, private))
    except BaseException:
        _remove_quietly(private)
        raise


def ensure_shared(paths: VzPaths, cache: CacheRef) -> Path:
    """The verified, unpacked shared copy of *cache*, made if missing."""
    sha = cache.digest()
    shared = paths.shared(sha)
    # the shared copies hold the cache's setuid programs: no host user may reach them
    top = shared.parent
    top.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(top.stat().st_mode) != 0o700:
        top.chmod(0o700)
    done = shared.with_name(sha + ".ok")
    if done.exists():
        return shared
    with _flock(shared.with_name(sha + ".lock")):
        if done.exists():
            return shared
        tmp = shared.with_name(f"{sha}.tmp{os.getpid()}")
        _remove_quietly(tmp)
        _remove_quietly(shared)
        tmp.mkdir(mode=0o755)
        try:
            cache.unpack_into(tmp)          # checked against the manifest first
            os.rename(tmp, shared)
        except BaseException:
            _remove_quietly(tmp)
            shared.with_name(sha + ".lock").unlink(missing_ok=True)
            raise
        done.write_text(cache.name + "\n")
    return shared


def shared_of(paths: VzPaths, ctid: int) -> Path:
    """The shared copy an overlay VE sits on: ``private/CTID/lower``, which must lead
    to a directory directly under ``VZ_ROOT/shared`` (never anywhere else)."""
    lower = (paths.private(ctid) / "lower").resolve()
    if lower.parent != (paths.root / "shared").resolve() or not lower.is_dir():
        raise VeError(f"the shared copy of VE {ctid} ({lower}) is missing or not under "
                      f"{paths.root / 'shared'}", hint="destroy and re-create the VE")
    return lower


def is_mounted(path: Path) -> bool:
    target = os.fsencode(str(path))
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            mp = line.split(b" ", 5)[4].replace(b"\\040", b" ")
            if mp == target:
                return True
    return False


def mount(paths: VzPaths, ctid: int, lay: Layout) -> Path:
    """Mount the VE's root on ``root/CTID`` (a no-op if it already is).

    *lay* comes from the VE's configuration, never from its files: a plain VE owns
    its private area and could plant anything there."""
    target = paths.ve_root(ctid)
    private = paths.private(ctid)
    if not private.is_dir():
        raise VeError(f"VE {ctid} has no private area {private}",
                      hint=f"create it: vzctl create {ctid} --ostemplate NAME")
    target.mkdir(parents=True, exist_ok=True)
    if is_mounted(target):
        return target
    try:
        if lay is Layout.PLAIN:
            libc.mount(str(private), str(target), None, libc.MS_BIND)
        else:
            lower = shared_of(paths, ctid)
            opts = (f"lowerdir={lower},upperdir={private / 'upper'},"
                    f"workdir={private / 'work'}")
            libc.mount("overlay", str(target), "overlay", 0, opts)
    except OSError as exc:
        raise VeError(f"cannot mount the root of VE {ctid} on {target}: {exc.strerror}",
                      hint="the overlay layout needs overlayfs (modprobe overlay)") from None
    return target


def umount(paths: VzPaths, ctid: int) -> None:
    target = paths.ve_root(ctid)
    while is_mounted(target):
        try:
            libc.umount2(str(target))
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise VeError(f"cannot unmount {target}: {exc.strerror}") from None
            libc.umount2(str(target), libc.MNT_DETACH)


def destroy(paths: VzPaths, ctid: int, lay: Layout) -> None:
    """Remove the private area and mount point, and an unused shared copy."""
    umount(paths, ctid)
    private = paths.private(ctid)
    shared: Path | None = None
    if lay is Layout.OVERLAY:
        with contextlib.suppress(VeError):
            shared = shared_of(paths, ctid)
    if private.exists() or private.is_symlink():
        try:
            remove_tree(private)
        except OSError as exc:
            raise VeError(f"cannot remove the private area {private}: {exc}",
                          hint="remove what is left by hand, then run vzctl destroy "
                               "again") from None
    with contextlib.suppress(OSError):
        paths.ve_root(ctid).rmdir()
    if shared is not None and not _shared_in_use(paths, shared):
        sha = shared.name
        with _flock(shared.with_name(sha + ".lock")):
            shared.with_name(sha + ".ok").unlink(missing_ok=True)
            _remove_quietly(shared)
        shared.with_name(sha + ".lock").unlink(missing_ok=True)


def _remove_quietly(path: Path) -> None:
    """Remove a tree on the way out of a failure (the first error is kept)."""
    with contextlib.suppress(OSError):
        remove_tree(path)


def _shared_in_use(paths: VzPaths, shared: Path) -> bool:
    base = paths.root / "private"
    for d in base.iterdir() if base.is_dir() else ():
        link = d / "lower"
        if link.is_symlink() and link.resolve() == shared:
            return True  # (a plain VE's planted link can only keep it alive longer)
    return False
