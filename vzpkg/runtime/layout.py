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
import os
import stat
from enum import StrEnum
from pathlib import Path

from vzpkg.core import mountinfo
from vzpkg.core.errors import VeError
from vzpkg.core.fstree import remove_tree
from vzpkg.runtime import diskimage, diskmount, idmap, libc, quota, state
from vzpkg.runtime.caches import CacheRef
from vzpkg.runtime.idmap import IdRange
from vzpkg.runtime.idshift import Shifted, shift_tree
from vzpkg.runtime.paths import VzPaths

_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
UMOUNT_NOFOLLOW = 8
# statvfs f_flag bits of a mount, and the mount(2) flags that keep them on a remount
_KEPT_FLAGS = ((os.ST_RDONLY, libc.MS_RDONLY), (os.ST_NOSUID, libc.MS_NOSUID),
               (os.ST_NOEXEC, libc.MS_NOEXEC), (os.ST_NOATIME, 1024),      # MS_NOATIME
               (os.ST_NODIRATIME, 2048), (os.ST_RELATIME, 1 << 21))       # MS_RELATIME


class Layout(StrEnum):
    PLAIN = "plain"
    OVERLAY = "overlay"


def create(paths: VzPaths, ctid: int, cache: CacheRef, layout: Layout,
           shift: IdRange | None = None,
           disk: quota.DiskLimits | None = None) -> Shifted | None:
    """Make the VE's private area (on a disk image of its own with *disk*, see
    :mod:`vzpkg.runtime.quota`); on any failure nothing is left behind.  With
    *shift* (plain layout only), its owners are then shifted into that range
    (:mod:`vzpkg.runtime.idshift`): what was shifted."""
    if shift is not None and layout is not Layout.PLAIN:
        raise VeError("only a plain VE's files can be shifted to its ids: an overlay "
                      "VE's lower layer is shared by the VEs made from the same cache",
                      hint="create it with --layout plain, or put VZ_ROOT on a file "
                           "system that takes idmapped mounts (ext4, xfs, btrfs, tmpfs)")
    private = paths.private(ctid)
    shifted: Shifted | None = None
    try:
        private.mkdir()
    except FileExistsError:
        raise VeError(f"private area {private} already exists",
                      hint=f"destroy VE {ctid} first, or remove that directory") from None
    try:
        image = disk is not None and disk.limited
        if image and layout is Layout.PLAIN:
            assert disk is not None
            diskimage.make_image(paths, ctid, disk)
            diskmount.attach(paths, ctid)
            (private / "lost+found").rmdir()    # unpacking wants an empty directory
        if layout is Layout.PLAIN:
            private.chmod(0o755)
            cache.unpack_into(private)      # checked against the manifest first
            if shift is not None:
                try:
                    shifted = shift_tree(private, shift)
                except OSError as exc:
                    raise VeError(f"VE {ctid}: cannot shift the owners of {private} to "
                                  f"host ids {shift}: {exc}; nothing was created",
                                  hint="see the message; an idmapped mount (a file system "
                                       "that takes one) needs no shift") from None
        else:
            shared = ensure_shared(paths, cache)
            lower = os.path.relpath(shared, private)
            # on an image, mkfs writes these three (never mounted at create); the
            # link stays under the mount point too, so that a stopped VE's shared
            # copy is seen in use (_shared_in_use) and found by destroy
            (private / "lower").symlink_to(lower)
            if image:
                assert disk is not None
                diskimage.make_image(paths, ctid, disk,
                                     tree={"upper": None, "work": None, "lower": lower})
            else:
                (private / "upper").mkdir(0o755)
                (private / "work").mkdir(0o755)
        if image and layout is Layout.PLAIN:
            diskmount.detach(paths, ctid)   # (an overlay VE's image is never mounted here)
    except BaseException:
        with contextlib.suppress(VeError, OSError):
            diskmount.remove(paths, ctid)
        _remove_quietly(private)
        raise
    return shifted


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
    with state.flocked(shared.with_name(sha + ".lock")):
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
    return mountinfo.is_mount_point(path)


def mount(paths: VzPaths, ctid: int, lay: Layout, ids: IdRange | None = None) -> Path:
    """Mount the VE's root on ``root/CTID`` (a no-op if it already is), ``nodev``:
    a device node planted in the VE's files opens nothing (the VE's /dev is a
    tmpfs of its own).  Setuid programs keep working.

    *lay* comes from the VE's configuration, never from its files: a plain VE owns
    its private area and could plant anything there.  Neither ``root/CTID`` nor
    ``private/CTID`` is followed through a symlink: the mount is made through
    ``O_PATH | O_NOFOLLOW`` descriptors of the very directories checked."""
    target = paths.ve_root(ctid)
    private = paths.private(ctid)
    if not private.is_dir() and not private.is_symlink():
        raise VeError(f"VE {ctid} has no private area {private}",
                      hint=f"create it: vzctl create {ctid} --ostemplate NAME")
    if not is_mounted(target):
        diskmount.attach(paths, ctid)   # its disk image, if it has one
    src = _open_real_dir(private, f"the private area of VE {ctid}")
    try:
        dst = _mount_point(target)
        try:
            if is_mounted(target):
                return target
            _mount_on(dst, src, paths, ctid, lay, ids)
        finally:
            os.close(dst)
    finally:
        os.close(src)
    return target


def _mount_on(dst: int, src: int, paths: VzPaths, ctid: int, lay: Layout,
              ids: IdRange | None) -> None:
    """Mount the root of VE *ctid* on the directory open as *dst* (O_PATH); with
    *ids*, through idmapped mounts (the VE's root sees its files as the cache has
    them, and the host sees them owned by the VE's range)."""
    target = paths.ve_root(ctid)
    on = f"/proc/self/fd/{dst}"
    try:
        if ids is not None and lay is Layout.PLAIN:
            idmap.mount_idmapped(Path(f"/proc/self/fd/{src}"), dst, ids,
                                 idmap.MOUNT_ATTR_NODEV)
        elif ids is not None:
            private = paths.private(ctid)
            idmap.mount_overlay_idmapped(shared_of(paths, ctid), private / "upper",
                                         private / "work", Path(on), ids, libc.MS_NODEV)
        elif lay is Layout.PLAIN:
            libc.mount(f"/proc/self/fd/{src}", on, None, libc.MS_BIND)
            _remount_nodev(target, src)
        else:
            private = paths.private(ctid)
            lower = shared_of(paths, ctid)
            opts = (f"lowerdir={lower},upperdir={private / 'upper'},"
                    f"workdir={private / 'work'}")
            libc.mount("overlay", on, "overlay", libc.MS_NODEV, opts)
    except OSError as exc:
        with contextlib.suppress(OSError):
            if is_mounted(target):
                libc.umount2(str(target), libc.MNT_DETACH | UMOUNT_NOFOLLOW)
        raise VeError(f"cannot mount the root of VE {ctid} on {target}: {exc.strerror}",
                      hint="the overlay layout needs overlayfs (modprobe overlay)") from None


def _remount_nodev(target: Path, src: int) -> None:
    """Add nodev to the bind mount just made on *target*, keeping the per-mount
    flags it took from the file system it came from (rw or ro, nosuid, noexec,
    atime)."""
    parent = os.open(target.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:        # a lookup by name crosses into the mount: its root, the private area
        top = os.open(target.name, _PATH_FLAGS, dir_fd=parent)
    finally:
        os.close(parent)
    try:
        if _ident(top) != _ident(src):
            raise OSError(errno.EBUSY, f"{target} is not the mount just made")
        have = os.fstatvfs(top).f_flag
        flags = libc.MS_BIND | libc.MS_REMOUNT | libc.MS_NODEV
        for st_flag, ms_flag in _KEPT_FLAGS:
            if have & st_flag:
                flags |= ms_flag
        libc.mount(None, f"/proc/self/fd/{top}", None, flags)
    finally:
        os.close(top)


def _open_real_dir(path: Path, what: str) -> int:
    """An O_PATH descriptor of directory *path*, which must not be a symlink."""
    try:
        return os.open(path, _PATH_FLAGS)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise VeError(f"cannot open {what} {path}: {exc.strerror}") from None
    raise VeError(f"{what} {path} is a symbolic link or not a directory",
                  hint="it must be the directory vzctl create made; move it back, or "
                       "destroy and re-create the VE")


def _mount_point(target: Path) -> int:
    """An O_PATH descriptor of the directory ``root/CTID``, made if missing; a
    symlink or file there (nothing vzctl made) is replaced by a directory."""
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    parent = os.open(target.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    name = target.name
    try:
        for _ in range(3):
            try:
                return os.open(name, _PATH_FLAGS, dir_fd=parent)
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                os.unlink(name, dir_fd=parent)      # a link or a file: never followed
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o755, dir_fd=parent)
        raise VeError(f"the mount point {target} keeps changing",
                      hint="something else is working on that path; try again")
    finally:
        os.close(parent)


def _ident(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def umount(paths: VzPaths, ctid: int) -> None:
    diskmount.unmount(paths.ve_root(ctid), VeError)
    diskmount.detach(paths, ctid)


def destroy(paths: VzPaths, ctid: int, lay: Layout) -> None:
    """Remove the private area and mount point, and an unused shared copy."""
    umount(paths, ctid)
    private = paths.private(ctid)
    shared: Path | None = None
    if lay is Layout.OVERLAY:
        with contextlib.suppress(VeError):
            shared = shared_of(paths, ctid)
    diskmount.remove(paths, ctid)
    if private.exists() or private.is_symlink():
        try:
            remove_tree(private)
        except OSError as exc:
            raise VeError(f"cannot remove the private area {private}: {exc}",
                          hint="remove what is left by hand, then run vzctl destroy "
                               "again") from None
    with contextlib.suppress(OSError):
        mount_point = paths.ve_root(ctid)
        if mount_point.is_symlink():
            mount_point.unlink()
        else:
            mount_point.rmdir()
    if shared is not None and not _shared_in_use(paths, shared):
        sha = shared.name
        with state.flocked(shared.with_name(sha + ".lock")):
            shared.with_name(sha + ".ok").unlink(missing_ok=True)
            _remove_quietly(shared)
        shared.with_name(sha + ".lock").unlink(missing_ok=True)


def _remove_quietly(path: Path) -> None:
    """Remove a tree on the way out of a failure (the first error is kept)."""
    with contextlib.suppress(OSError):
        remove_tree(path)


def _shared_in_use(paths: VzPaths, shared: Path) -> bool:
    base = paths.private_base
    for d in base.iterdir() if base.is_dir() else ():
        link = d / "lower"
        if link.is_symlink() and link.resolve() == shared:
            return True  # (a plain VE's planted link can only keep it alive longer)
    return False
