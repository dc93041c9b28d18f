"""Safe unpacking (and scanning) of tar archives: plain, gzip, xz or zstd.

The compression is recognised from the content, not the file name.  Every entry
passes :class:`vzpkg.archive.policy.Policy` first; libarchive's own guards
``SECURE_NODOTDOT`` and ``SECURE_NOABSOLUTEPATHS`` stay on underneath as a
second line (``SECURE_SYMLINKS`` does not, see ``_SAFE``).  libarchive creates
files with O_EXCL and O_NOFOLLOW and lstat()s what is in its way, so with the
policy's guarantee that every parent is a real directory made by this archive
nothing during unpacking follows a symlink.  A compressed archive is
decompressed on a second thread, as ``zstd -dc | tar -x`` would.

Anything refused -> UnsafeArchiveError naming the entry, and everything
unpacked so far is removed (``dest`` too if we made it).

As root, owners, modes (setuid/setgid too), mtimes, extended attributes, file
capabilities and POSIX ACLs are restored; a failure to restore any of them is
an error.  Without root, owners and privileged xattrs cannot be restored and
are skipped silently.  File flags (chattr) are not restored.

libarchive extracts relative to the working directory, so :func:`unpack`
changes it while it runs (and restores it): do not unpack from two threads.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from vzpkg.archive import _lib as L
from vzpkg.archive.policy import Policy, check_xattrs, display
from vzpkg.archive.source import damaged, open_archive
from vzpkg.core.errors import ArchiveError, UnsafeArchiveError

_PROGRESS_EVERY = 256
THREADED = True         # decompress on a second thread while unpacking
# EXTRACT_SECURE_SYMLINKS is left off on purpose: it lstat()s and opens every
# directory above every entry (3x the system calls of GNU tar, measured), and
# Policy already refuses every entry whose parents are not directories made by
# this archive, in a destination that started empty.
_SAFE = L.EXTRACT_SECURE_NODOTDOT | L.EXTRACT_SECURE_NOABSOLUTEPATHS
_RESTORE = L.EXTRACT_PERM | L.EXTRACT_TIME | L.EXTRACT_XATTR | L.EXTRACT_ACL


@dataclass(frozen=True)
class UnpackResult:
    """``file_count`` counts every entry; ``unpacked_size`` the bytes of file data."""

    file_count: int
    unpacked_size: int


_Progress = Callable[[int, int], None] | None


def _entries(archive: Path, a: int, position: Callable[[], int], size: int,
             progress: _Progress) -> Iterator[tuple[int, int]]:
    """Yield (entry, bytes of file data) for each entry that passed the policy."""
    check = Policy().check
    slot = ctypes.c_void_p()
    ref = ctypes.addressof(slot)
    next_header, pathname, filetype = L.read_next_header, L.entry_pathname, L.entry_filetype
    hardlink, esize, AE_IFREG, AE_IFCHR = L.entry_hardlink, L.entry_size, L.AE_IFREG, L.AE_IFCHR
    xattr_count = L.entry_xattr_count
    n = 0
    while True:
        r = next_header(a, ref)
        if r == L.EOF:
            break
        e: int = slot.value or 0
        if r != L.OK:
            if r == L.WARN and e:
                raise UnsafeArchiveError(display(pathname(e) or b"?"), L.message(a))
            raise damaged(archive, a)
        ftype = filetype(e)
        if xattr_count(e):
            check_xattrs(pathname(e), L.xattr_names(e))
        if ftype == AE_IFREG:
            check(pathname(e), ftype, hardlink(e))
            yield e, esize(e)
        else:
            rdev = (L.entry_rdevmajor(e), L.entry_rdevminor(e)) if ftype == AE_IFCHR else None
            check(pathname(e), ftype, hardlink(e), rdev)
            yield e, 0
        n += 1
        if progress and not n % _PROGRESS_EVERY:
            progress(position(), size)
    if progress:
        progress(size, size)


def scan(archive: Path, *, progress: _Progress = None) -> UnpackResult:
    """Check every entry of ``archive`` against the unpack rules (reading all of
    its data, so damage is found too) without writing anything.
    ``progress(done, total)`` gets bytes of the archive file read."""
    archive = Path(archive)
    count = total = 0
    with L.utf8_locale(), L.gc_paused(), open_archive(archive) as (a, position, size):
        for _e, n in _entries(archive, a, position, size, progress):
            count += 1
            total += n
            if n and L.read_data_skip(a) < L.WARN:
                raise damaged(archive, a)
    return UnpackResult(file_count=count, unpacked_size=total)


def unpack(archive: Path, dest: Path, *, progress: _Progress = None) -> UnpackResult:
    """Unpack ``archive`` into ``dest``, which must not exist or be an empty
    directory.  ``progress(done, total)`` gets bytes of the archive file read."""
    archive, dest = Path(archive), Path(dest).absolute()
    made = _prepare(dest)
    before = os.lstat(dest)
    cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with L.utf8_locale(), L.gc_paused(), \
                open_archive(archive, threaded=THREADED) as (a, position, size):
            os.chdir(dest)
            try:
                result, root_mtime = _extract(archive, a, position, size, progress)
            finally:
                os.fchdir(cwd)
        if root_mtime is not None:
            os.utime(dest, (root_mtime, root_mtime), follow_symlinks=False)
        return result
    except BaseException:
        _remove(dest, keep_root=not made)
        if not made:
            with suppress(OSError):
                os.chown(dest, before.st_uid, before.st_gid, follow_symlinks=False)
                os.chmod(dest, stat.S_IMODE(before.st_mode))
        raise
    finally:
        os.close(cwd)


def _prepare(dest: Path) -> bool:
    """Make sure ``dest`` is an empty directory; True if we created it."""
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        try:
            dest.mkdir(mode=0o755)
        except OSError as exc:
            raise ArchiveError(f"cannot create {dest}: {exc.strerror}",
                               hint="its parent directory must exist and be writable") from exc
        return True
    if not stat.S_ISDIR(st.st_mode):
        raise ArchiveError(f"{dest}: exists and is not a directory",
                           hint="unpack into a new or empty directory")
    with os.scandir(dest) as it:
        if any(True for _ in it):
            raise ArchiveError(f"{dest}: directory is not empty",
                               hint="unpack into a new or empty directory")
    return False


def _extract(archive: Path, a: int, position: Callable[[], int], size: int,
             progress: _Progress) -> tuple[UnpackResult, int | None]:
    """The extraction loop; the working directory is the destination.

    As root every entry goes through one archive_read_extract2() call (header,
    data and metadata in C) and anything short of OK is an error.  Without root
    the steps are separate, so that a refused header (an error) can be told
    from metadata that could not be restored (skipped)."""
    root = os.geteuid() == 0
    w = L.write_disk_new()
    count = total = 0
    root_mtime: int | None = None
    try:
        L.check(w, L.write_disk_set_options(w, _SAFE | _RESTORE | (L.EXTRACT_OWNER if root
                                                                     else 0)), "disk options")
        entries = _entries(archive, a, position, size, progress)
        if root:
            extract2 = L.read_extract2
            for e, length in entries:
                if extract2(a, e, w) != L.OK:
                    raise ArchiveError(f"{archive}: cannot unpack "
                                       f"{display(L.entry_pathname(e) or b'?')!r}: "
                                       f"{L.message(a)}", hint=_HINT)
                if not count and L.entry_pathname(e) in _ROOT_NAMES:
                    root_mtime = L.entry_mtime(e)
                count += 1
                total += length
        else:
            for e, length in entries:
                _extract_unprivileged(archive, a, w, e, length)
                if not count and L.entry_pathname(e) in _ROOT_NAMES:
                    root_mtime = L.entry_mtime(e)
                count += 1
                total += length
        if L.write_close(w) < (L.OK if root else L.WARN):
            raise ArchiveError(f"cannot finish unpacking {archive}: {L.message(w)}")
    finally:
        L.write_free(w)
    return UnpackResult(file_count=count, unpacked_size=total), root_mtime


def _extract_unprivileged(archive: Path, a: int, w: int, e: int, length: int) -> None:
    if L.write_header(w, e) < L.WARN:
        raise UnsafeArchiveError(display(L.entry_pathname(e) or b"?"), L.message(w))
    if length:
        buf, n, off = ctypes.c_void_p(), ctypes.c_size_t(), ctypes.c_int64()
        refs = ctypes.addressof(buf), ctypes.addressof(n), ctypes.addressof(off)
        while True:
            r = L.read_data_block(a, *refs)
            if r == L.EOF:
                break
            if r < L.OK:
                raise damaged(archive, a)
            if L.write_data_block(w, buf, n, off) < L.OK:
                _write_error(w, e)
    if L.write_finish_entry(w) < L.WARN:
        _write_error(w, e)


_ROOT_NAMES = (b".", b"./")
_HINT = "check free space and the target filesystem, or whether the archive is damaged"


def _write_error(w: int, e: int) -> None:
    raise ArchiveError(f"cannot unpack {display(L.entry_pathname(e) or b'?')!r}: "
                       f"{L.message(w)}", hint=_HINT)


def _remove(dest: Path, *, keep_root: bool) -> None:
    """Remove what we unpacked, never following a symlink.  Without root,
    directories unpacked read-only are made writable first."""
    if os.geteuid() != 0:
        with suppress(OSError):
            os.chmod(dest, 0o700)
        for top, dirs, _files in os.walk(dest):
            for d in dirs:
                path = os.path.join(top, d)
                if not os.path.islink(path):
                    with suppress(OSError):
                        os.chmod(path, 0o700)
    if not keep_root:
        shutil.rmtree(dest, ignore_errors=True)
        return
    with os.scandir(dest) as it:
        for child in list(it):
            if child.is_dir(follow_symlinks=False):
                shutil.rmtree(child.path, ignore_errors=True)
            else:
                with suppress(OSError):
                    os.unlink(child.path)
