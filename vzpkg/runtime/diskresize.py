"""Changing a VE's disk limits: live on a running VE (the balloon, online
growth with EXT4_IOC_RESIZE_FS), offline on a stopped one (e2fsck, resize2fs),
and reconciling a stopped VE's image with CTID.conf before it is mounted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
from pathlib import Path

from vzpkg.runtime import diskballoon, diskimage, diskmount
from vzpkg.runtime.diskimage import BLOCK, image_path
from vzpkg.runtime.paths import VzPaths
from vzpkg.runtime.quota import UNLIMITED, DiskLimits, QuotaError

EXT4_IOC_RESIZE_FS = 0x40086610
LOOP_SET_CAPACITY = 0x4C07


def reconcile(paths: VzPaths, ctid: int, limits: DiskLimits) -> None:
    """Make a stopped VE's image what *limits* says, and mount it: a balloon left
    by a live lowering is let out and the image shrunk (resize2fs), an image
    smaller than the limit (a raise saved while the VE ran) grown.  QuotaError,
    with the image as it was, when its files do not fit."""
    img, private = image_path(paths, ctid), paths.private(ctid)
    if not img.is_file() or limits.space_hard >= UNLIMITED:
        return
    if diskmount.is_mounted(paths.ve_root(ctid)):
        raise QuotaError(f"VE {ctid} is mounted ({paths.ve_root(ctid)}), so its disk "
                         "image cannot be resized now; nothing was changed",
                         hint=f"vzctl umount {ctid} first")
    diskmount.umount(private)           # (left by an earlier command)
    target = limits.space_hard * 1024 // BLOCK * BLOCK
    diskmount.wait_released(img, ctid)
    diskmount.mount(img, private, ctid)
    try:
        if diskballoon.balloon_size(private) == 0 and img.stat().st_size == target:
            return
        diskballoon.drop_balloon(private)
        diskmount.umount(private)
        diskmount.wait_released(img, ctid)
        if target > img.stat().st_size:
            os.truncate(img, target)
        _resize_offline(img, ctid, target)
        diskmount.mount(img, private, ctid)
    except BaseException:
        with contextlib.suppress(QuotaError):
            diskmount.umount(private)
        raise


def _resize_offline(img: Path, ctid: int, size: int) -> None:
    """resize2fs the unmounted image to *size*; when its files do not fit, the
    image is left as it was (resize2fs refuses before it moves a block)."""
    diskimage.settle_image(img, ctid)   # (made at its first mount: done already)
    blocks = size // BLOCK
    old = img.stat().st_size
    diskimage.run(["e2fsck", "-f", "-p", str(img)], f"checking the disk image of VE {ctid}",
                  ok=(0, 1))            # 1: errors corrected
    try:
        diskimage.run(["resize2fs", str(img), str(blocks)],
                      f"resizing the disk image of VE {ctid}")
    except QuotaError as exc:
        if old < size:
            os.truncate(img, old)
        raise QuotaError(f"{exc.message}; nothing was changed",
                         hint="the VE's files need more than that: free space inside "
                              "it first, or give a higher limit") from None
    if img.stat().st_size > blocks * BLOCK:
        os.truncate(img, blocks * BLOCK)


def resize(paths: VzPaths, ctid: int, old: DiskLimits, new: DiskLimits,
           running: bool) -> list[str]:
    """Apply *new* to VE *ctid*'s image (which exists), live on a running VE, else
    offline; QuotaError and nothing changed when it cannot be done."""
    notes: list[str] = []
    img, private = image_path(paths, ctid), paths.private(ctid)
    if new.inodes_hard != old.inodes_hard:
        raise QuotaError(
            f"VE {ctid}: DISKINODES of a disk image is set when it is made (mkfs) and "
            "grows with --diskspace; it cannot be changed on its own",
            hint="leave --diskinodes out, or re-create the VE with the inode limit")
    if new.space_hard != old.space_hard:
        if new.space_hard >= UNLIMITED:
            raise QuotaError(f"VE {ctid} lives on a disk image; its DISKSPACE cannot be "
                             "unlimited", hint="give a limit (e.g. --diskspace 100G)")
        target = new.space_hard * 1024 // BLOCK * BLOCK
        if running:
            size = img.stat().st_size
            if target > size:
                _grow_online(img, private, ctid, target)
                size = target
            _set_balloon_checked(private, ctid, size - target)
            notes.append(f"disk limit of running VE {ctid} is now {new.space_hard}K")
        else:
            reconcile(paths, ctid, new)
            diskmount.detach(paths, ctid)
            notes.append(f"disk image of VE {ctid} resized to {new.space_hard}K")
    if new.inodes_soft < new.inodes_hard:
        notes.append(soft_warning())
    return notes


def soft_warning() -> str:
    return ("warning: the soft inode limit is stored and shown but not enforced: the "
            "disk image's inode count is the hard limit (docs/QUOTA.md)")


def _set_balloon_checked(private: Path, ctid: int, size: int) -> None:
    try:
        diskballoon.set_balloon(private, size)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise QuotaError(f"VE {ctid} uses more disk space than the new limit; "
                             "nothing was changed",
                             hint="free space inside the VE first, or give a higher "
                                  "limit (vzquota stat CTID shows the usage)") from None
        raise QuotaError(f"cannot change the disk limit of VE {ctid}: {exc.strerror}") \
            from None


def _grow_online(img: Path, private: Path, ctid: int, size: int) -> None:
    """Grow the image file, its loop device and its file system to *size*; when a
    step fails, each step before it is undone on its own (a failure of one undo
    does not skip the next), and QuotaError says nothing was changed."""
    old = img.stat().st_size
    dev = diskmount.loop_of(private)
    resizing = False
    try:
        os.truncate(img, size)
        _set_capacity(dev)
        top = diskballoon.open_top(private)
        try:
            resizing = True
            fcntl.ioctl(top, EXT4_IOC_RESIZE_FS, struct.pack("Q", size // BLOCK))
        finally:
            os.close(top)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.truncate(img, old)
        with contextlib.suppress(OSError):
            _set_capacity(dev)
        why = ("vzctl lacks CAP_SYS_RESOURCE, which the kernel asks for to grow a "
               "mounted ext4" if exc.errno == errno.EPERM and resizing
               else os.strerror(exc.errno or 0))
        raise QuotaError(f"cannot grow the disk image of running VE {ctid} past its "
                         f"size ({old >> 10}K): {why}; nothing was changed",
                         hint="stop the VE and set it then, or add --save and the new "
                              "limit applies at the next start") from None


def _set_capacity(dev: str) -> None:
    """Make loop device *dev* as large as its backing file is now."""
    with open(dev, "rb") as f:
        fcntl.ioctl(f.fileno(), LOOP_SET_CAPACITY, 0)
