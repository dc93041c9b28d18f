"""The balloon: ``/.vzquota-balloon`` at the top of a VE's image, a host-owned,
immutable file whose allocated blocks the VE cannot use.  Lowering a running VE's
limit (:mod:`diskresize`) and a soft limit past its grace (:mod:`diskgrace`) fill
it; it is opened without following links and refused when the VE planted it.
"""

from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path

from vzpkg.runtime.quota import QuotaError

BALLOON = ".vzquota-balloon"
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_IMMUTABLE_FL = 0x10


def open_top(private: Path) -> int:
    return os.open(private, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def _open_balloon(top: int, create: bool) -> int | None:
    """The balloon, opened read-only without following links; None if there is
    none.  A balloon is a regular file of the host's root with one link: anything
    else of that name was planted by the VE and is an error, never written
    through.  (:func:`_writable` reopens it for writing once it is mutable.)"""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        if create:
            fd = os.open(BALLOON, flags | os.O_CREAT | os.O_EXCL, 0, dir_fd=top)
            _set_immutable(fd, True)
            return fd
        fd = os.open(BALLOON, flags, dir_fd=top)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise QuotaError(f"the balloon /{BALLOON} in the VE is not vzctl's "
                         f"({exc.strerror})", hint=f"remove /{BALLOON} inside the VE "
                         "and try again") from None
    st = os.fstat(fd)
    # immutable: only the host can set that flag, so the VE did not make this file
    if not (st.st_mode & 0o170000 == 0o100000 and st.st_uid == 0 and st.st_nlink == 1
            and _flags(fd) & FS_IMMUTABLE_FL):
        os.close(fd)
        raise QuotaError(f"/{BALLOON} in the VE is not vzctl's balloon",
                         hint=f"remove /{BALLOON} inside the VE and try again")
    return fd


def _flags(fd: int) -> int:
    return int(struct.unpack("l", fcntl.ioctl(fd, FS_IOC_GETFLAGS, struct.pack("l", 0)))[0])


def _writable(fd: int) -> int:
    """A writable descriptor of the very file open as *fd* (no path lookup)."""
    return os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_CLOEXEC)


def _set_immutable(fd: int, on: bool) -> None:
    flags = _flags(fd)
    flags = flags | FS_IMMUTABLE_FL if on else flags & ~FS_IMMUTABLE_FL
    fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("l", flags))


def balloon_size(private: Path) -> int:
    top = open_top(private)
    try:
        fd = _open_balloon(top, create=False)
        if fd is None:
            return 0
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)
    finally:
        os.close(top)


def drop_balloon(private: Path) -> None:
    top = open_top(private)
    try:
        fd = _open_balloon(top, create=False)
        if fd is not None:
            try:
                _set_immutable(fd, False)
            finally:
                os.close(fd)
            os.unlink(BALLOON, dir_fd=top)
    finally:
        os.close(top)


def set_balloon(private: Path, size: int) -> None:
    """Make the balloon *size* bytes: its blocks are allocated (fallocate), so
    the VE cannot write them; ENOSPC, and the balloon as it was, when the VE
    already uses them."""
    top = open_top(private)
    try:
        fd = _open_balloon(top, create=False)
        if fd is None:
            if size == 0:
                return
            fd = _open_balloon(top, create=True)
            assert fd is not None
        try:
            old = os.fstat(fd).st_size
            _set_immutable(fd, False)
            try:
                w = _writable(fd)
                try:
                    if size > old:
                        try:
                            os.posix_fallocate(w, 0, size)
                        except OSError:
                            os.ftruncate(w, old)
                            raise
                    else:
                        os.ftruncate(w, size)
                finally:
                    os.close(w)
            finally:
                _set_immutable(fd, True)
            now = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if now == 0:
            drop_balloon(private)
    finally:
        os.close(top)
