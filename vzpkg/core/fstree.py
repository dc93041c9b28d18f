"""Removing a directory tree that someone else filled: a VE's private area.

:func:`shutil.rmtree` recurses once per directory level and holds a file
descriptor per level, so a tree a few thousand levels deep (a VE can make one
with ``mkdir d && cd d`` in a loop) stops it with RecursionError or EMFILE, and
the VE is left behind.  :func:`remove_tree` walks with an explicit stack and
directory file descriptors:

* every entry is opened, listed, unlinked and removed relative to its parent's
  descriptor (``dir_fd``), so no path longer than a name is ever built;
* a directory is opened with ``O_NOFOLLOW | O_DIRECTORY``: a symlink, even one
  swapped in for a directory during the walk, is removed and never followed;
* only the directory being worked on is open: going back up opens ``..`` and
  checks it is the directory it came from (device and inode), so a tree moved
  during the walk stops it instead of leading it out of the tree.

The stack holds names, not descriptors: memory grows with the depth, open files
do not.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass, field

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class _Level:
    name: str                   # in the directory one level up
    ident: tuple[int, int]      # (st_dev, st_ino): to check the way back up
    subdirs: list[str] = field(default_factory=list)   # still to remove


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Remove *path* and everything below it; a symlink or file at *path* is
    unlinked (never followed).  FileNotFoundError if *path* does not exist."""
    path = os.path.abspath(os.fspath(path))
    head, name = os.path.split(path)
    if not name:
        raise OSError(errno.EBUSY, "refusing to remove the root directory", path)
    parent = os.open(head, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fd = _open_dir(parent, name)
        except NotADirectoryError:     # a file, or a symlink (O_NOFOLLOW: ELOOP)
            os.unlink(name, dir_fd=parent)
            return
        try:
            _remove_below(fd, name)
        finally:
            os.close(fd)
        os.rmdir(name, dir_fd=parent)
    finally:
        os.close(parent)


def _remove_below(top: int, name: str) -> None:
    """Empty the directory open as *top*, depth first, one level open at a time.

    *top* stays open (the caller closes it); the descriptors of the levels below
    are opened and closed here."""
    fd = top
    stack = [_Level(name, _ident(fd), _clear(fd))]
    try:
        while stack:
            level = stack[-1]
            if level.subdirs:
                sub = level.subdirs.pop()
                try:
                    child = _open_dir(fd, sub)
                except FileNotFoundError:
                    continue
                except NotADirectoryError:  # replaced by a symlink or file meanwhile
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(sub, dir_fd=fd)
                    continue
                if fd != top:
                    os.close(fd)
                fd = child
                stack.append(_Level(sub, _ident(fd), _clear(fd)))
                continue
            stack.pop()
            if not stack:
                break                   # back at the top: the caller removes it
            up = top if len(stack) == 1 else os.open("..", _DIR_FLAGS, dir_fd=fd)
            if _ident(up) != stack[-1].ident:
                if up != top:
                    os.close(up)
                raise OSError(errno.ESTALE, "the tree was moved while it was removed "
                                            f"(at {level.name!r})")
            if fd != top:
                os.close(fd)
            fd = up
            os.rmdir(level.name, dir_fd=fd)
    finally:
        if fd != top:
            os.close(fd)


def _open_dir(dir_fd: int, name: str) -> int:
    """Open directory *name* below *dir_fd*, never through a symlink;
    NotADirectoryError for anything that is not a directory."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise NotADirectoryError(exc.errno, exc.strerror, name) from None
        if exc.errno != errno.EACCES:
            raise
    # not root (no CAP_DAC_OVERRIDE) and a directory without r-x for its owner:
    # chmod it through an O_PATH descriptor (the very directory, never a link)
    pfd = os.open(name, os.O_PATH | _DIR_FLAGS, dir_fd=dir_fd)
    try:
        os.chmod(f"/proc/self/fd/{pfd}", stat.S_IRWXU)
    finally:
        os.close(pfd)
    return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def _clear(fd: int) -> list[str]:
    """Unlink every non-directory in the directory open as *fd*; its subdirectories."""
    with os.scandir(fd) as it:
        entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
    subdirs: list[str] = []
    for name, is_dir in entries:
        if is_dir:
            subdirs.append(name)
            continue
        try:
            os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            pass
        except IsADirectoryError:       # turned into a directory meanwhile
            subdirs.append(name)
    return subdirs


def _ident(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino
