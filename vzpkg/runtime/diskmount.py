"""Mounting a VE's disk image on its private area through a loop device of its
own (direct I/O, the file system's block size, autoclear), unmounting it, and
waiting until a just-stopped VE's image is released before offline work on it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import stat
import struct
import time
from pathlib import Path

from vzpkg.core import mountinfo
from vzpkg.core.errors import VeError
from vzpkg.runtime import diskimage, libc
from vzpkg.runtime.diskimage import BLOCK, image_path
from vzpkg.runtime.paths import VzPaths
from vzpkg.runtime.quota import QuotaError

LOOP_CONFIGURE = 0x4C0A
LOOP_CTL_GET_FREE = 0x4C82
LO_FLAGS_AUTOCLEAR = 4
LO_FLAGS_DIRECT_IO = 16
UMOUNT_NOFOLLOW = 8
RELEASE_WAIT = 10.0               # seconds a just-stopped VE's mounts may take to go


def is_mounted(path: Path) -> bool:
    return mountinfo.is_mount_point(path)


def attach(paths: VzPaths, ctid: int) -> None:
    """Mount the VE's image on its private area (a no-op without an image or when
    mounted)."""
    img, private = image_path(paths, ctid), paths.private(ctid)
    if img.is_file() and not is_mounted(private):
        mount(img, private, ctid)


def detach(paths: VzPaths, ctid: int) -> None:
    """Unmount the VE's image (its loop device goes with the mount)."""
    private = paths.private(ctid)
    if image_path(paths, ctid).is_file():
        umount(private)


def remove(paths: VzPaths, ctid: int) -> None:
    detach(paths, ctid)
    image_path(paths, ctid).unlink(missing_ok=True)


def mount(img: Path, private: Path, ctid: int, *, readonly: bool = False) -> None:
    """Mount *img* on *private* (nodev) through a loop device of its own, which
    goes with the mount (autoclear); at its first mount, the image is made
    (:func:`diskimage.settle_image`)."""
    diskimage.settle_image(img, ctid)
    private.mkdir(mode=0o755, exist_ok=True)
    fd, dev = _loop_attach(img, ctid)
    try:
        libc.mount(dev, str(private), "ext4",
                   libc.MS_NODEV | (libc.MS_RDONLY if readonly else 0),
                   "noload" if readonly else None)
    except OSError as exc:
        raise QuotaError(f"cannot mount the disk image {img} of VE {ctid}: {exc.strerror}",
                         hint=f"check it: e2fsck -f {img}") from None
    finally:
        os.close(fd)                    # (a loop device nobody mounted goes now)


def _loop_attach(img: Path, ctid: int) -> tuple[int, str]:
    """A free loop device set to *img* with direct I/O (the image's pages are not
    cached twice: writes in the VE run at the host file system's speed), sectors of
    the file system's block size (every request is aligned for direct I/O) and
    autoclear: (its open descriptor, its path)."""
    backing = os.open(img, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        try:
            for _ in range(64):
                n = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
                dev = f"/dev/loop{n}"
                if not os.path.exists(dev):         # a host without udev
                    with contextlib.suppress(FileExistsError):
                        os.mknod(dev, 0o660 | stat.S_IFBLK, os.makedev(7, n))
                fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
                for flags, bsize in ((LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO, BLOCK),
                                     (LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO, 0),
                                     (LO_FLAGS_AUTOCLEAR, 0)):
                    info = bytearray(232)           # struct loop_info64
                    struct.pack_into("I", info, 52, flags)
                    name = os.fsencode(str(img))[:63]
                    info[56:56 + len(name)] = name
                    try:
                        fcntl.ioctl(fd, LOOP_CONFIGURE,
                                    struct.pack("II", backing, bsize) + bytes(info)
                                    + bytes(64))
                        return fd, dev
                    except OSError as exc:
                        if exc.errno != errno.EINVAL:   # EINVAL: not that here
                            os.close(fd)
                            if exc.errno == errno.EBUSY:
                                break               # taken meanwhile: the next one
                            raise QuotaError(f"cannot set up a loop device for the disk "
                                             f"image of VE {ctid}: {exc.strerror}") from None
                else:
                    os.close(fd)
                    raise QuotaError(f"cannot set up a loop device for the disk image of "
                                     f"VE {ctid}")
        finally:
            os.close(ctl)
    finally:
        os.close(backing)
    raise QuotaError(f"no free loop device for the disk image of VE {ctid}",
                     hint="see losetup -a; modprobe loop max_loop=N")


def umount(private: Path) -> None:
    """Unmount the image.  A VE's mount namespace lets go of it a moment after its
    last process ends, so EBUSY is retried for a while before a lazy unmount (the
    offline work waits for the loop device to go: :func:`wait_released`)."""
    unmount(private, QuotaError, wait=RELEASE_WAIT)


def unmount(target: Path, error: type[VeError], *, wait: float = 0.0) -> None:
    """Unmount whatever is mounted on *target*, retrying EBUSY for *wait* seconds,
    then lazily.  A mount that another process took away meanwhile is no error; any
    other failure, of either unmount, is *error*."""
    deadline = time.monotonic() + wait
    lazy = 0
    while is_mounted(target):
        try:
            libc.umount2(str(target), UMOUNT_NOFOLLOW | lazy)
        except OSError as exc:
            if exc.errno == errno.EBUSY and not lazy:
                if time.monotonic() < deadline:
                    time.sleep(0.02)
                else:
                    lazy = libc.MNT_DETACH
                continue
            if not is_mounted(target):      # another process took it away meanwhile
                return
            how = " (even lazily)" if lazy else ""
            raise error(f"cannot unmount {target}{how}: {os.strerror(exc.errno or 0)}",
                        hint=f"see what is mounted there: findmnt -R {target}") from None


def _loops_of(img: Path) -> list[str]:
    """The loop devices backed by *img* (sysfs)."""
    want = str(img.resolve())
    out = []
    for bf in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            if bf.read_text().strip() == want:
                out.append(bf.parent.parent.name)
    return out


def wait_released(img: Path, ctid: int) -> None:
    """Wait until no loop device holds *img* (the kernel still writes to a file
    system unmounted lazily): offline work on it before that would be lost."""
    deadline = time.monotonic() + RELEASE_WAIT
    while _loops_of(img):
        if time.monotonic() > deadline:
            raise QuotaError(f"the disk image of VE {ctid} is still in use "
                             f"({', '.join(_loops_of(img))}); nothing was changed",
                             hint="a process may still hold a file of the VE; try "
                                  "again, or see losetup -a and fuser -m")
        time.sleep(0.05)


def loop_of(private: Path) -> str:
    for m in mountinfo.read():
        if m.point == str(private) and re.fullmatch(r"/dev/loop\d+", m.source):
            return m.source
    raise QuotaError(f"{private} is not a mounted disk image")

