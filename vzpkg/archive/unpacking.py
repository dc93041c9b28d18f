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
import fcntl
import functools
import os
import shutil
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from vzpkg.archive import _lib as L
from vzpkg.archive.policy import Policy, display
from vzpkg.errors import ArchiveError, UnsafeArchiveError

_PROGRESS_EVERY = 256
_BLOCK = 1 << 20
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


class _Inflater(threading.Thread):
    """Decompresses on its own thread into a pipe, like ``zstd -dc | tar -x``:
    ctypes and os.write release the GIL, so this overlaps with extraction."""

    def __init__(self, raw: int, wfd: int) -> None:
        super().__init__(name="vzpkg-inflate", daemon=True)
        self.raw = raw
        self.wfd = wfd
        self.error: str | None = None

    def run(self) -> None:
        buf = ctypes.create_string_buffer(_BLOCK)
        addr, view = ctypes.addressof(buf), memoryview(buf).cast("B")
        try:
            while True:
                n = L.read_data(self.raw, addr, _BLOCK)
                if n == 0:
                    break
                if n < 0:
                    self.error = L.message(self.raw)
                    break
                chunk = view[:n]
                while chunk:
                    chunk = chunk[os.write(self.wfd, chunk):]
        except BrokenPipeError:
            pass                              # the reader stopped early
        except OSError as exc:
            self.error = exc.strerror
        finally:
            os.close(self.wfd)


def _open(a: int, fd: int, archive: Path) -> None:
    if L.read_open_fd(a, fd, _BLOCK) < L.WARN:
        raise _damaged(archive, a)


@contextmanager
def _reader(archive: Path) -> Iterator[tuple[int, Callable[[], int], int]]:
    """(tar read handle, bytes-of-the-file-read-so-far, file size) for ``archive``.
    A compressed file is decompressed on a second thread."""
    try:
        fd = os.open(archive, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ArchiveError(f"cannot open {archive}: {exc.strerror}") from exc
    raw = L.read_new()
    inflater: _Inflater | None = None
    rfd = -1
    tar = L.read_new()
    try:
        size = os.fstat(fd).st_size
        for support in L.read_support_filter:
            L.check(raw, support(raw), "read filter")
        L.check(raw, L.read_support_format_raw(raw), "raw format")
        entry = ctypes.c_void_p()
        compressed = (L.read_open_fd(raw, fd, _BLOCK) == L.OK
                      and L.read_next_header(raw, ctypes.byref(entry)) == L.OK
                      and L.filter_count(raw) > 1)
        L.check(tar, L.read_support_format_tar(tar), "tar format")
        if compressed:
            rfd, wfd = os.pipe2(os.O_CLOEXEC)
            with suppress(OSError):
                fcntl.fcntl(wfd, fcntl.F_SETPIPE_SZ, _BLOCK)
            inflater = _Inflater(raw, wfd)
            inflater.start()
            _open(tar, rfd, archive)
            position = functools.partial(L.filter_bytes, raw, -1)
        else:
            os.lseek(fd, 0, os.SEEK_SET)
            for support in L.read_support_filter:      # the raw probe may have missed one
                L.check(tar, support(tar), "read filter")
            _open(tar, fd, archive)
            position = functools.partial(L.filter_bytes, tar, -1)
        try:
            yield tar, position, size
        except ArchiveError:
            if inflater is not None and inflater.error is not None:
                raise ArchiveError(f"{archive}: {inflater.error}", hint=_DAMAGED) from None
            raise
    finally:
        L.read_free(tar)
        if rfd >= 0:
            os.close(rfd)
        if inflater is not None:
            inflater.join()
        L.read_free(raw)
        os.close(fd)


_DAMAGED = "the file is damaged or is not a tar archive (plain, .gz, .xz or .zst)"


def _damaged(archive: Path, a: int) -> ArchiveError:
    return ArchiveError(f"{archive}: {L.message(a)}", hint=_DAMAGED)


_Progress = Callable[[int, int], None] | None


def _entries(archive: Path, a: int, position: Callable[[], int], size: int,
             progress: _Progress) -> Iterator[tuple[int, int]]:
    """Yield (entry, data size) for each entry that passed the policy."""
    check = Policy().check
    entry = ctypes.c_void_p()
    ref = ctypes.byref(entry)
    next_header, pathname, filetype = L.read_next_header, L.entry_pathname, L.entry_filetype
    hardlink, esize, AE_IFREG, AE_IFCHR = L.entry_hardlink, L.entry_size, L.AE_IFREG, L.AE_IFCHR
    n = 0
    while True:
        r = next_header(a, ref)
        if r == L.EOF:
            break
        e: int = entry.value or 0
        if r != L.OK:
            if r == L.WARN and e:
                raise UnsafeArchiveError(display(pathname(e) or b"?"), L.message(a))
            raise _damaged(archive, a)
        ftype = filetype(e)
        rdev = (L.entry_rdevmajor(e), L.entry_rdevminor(e)) if ftype == AE_IFCHR else (0, 0)
        check(pathname(e), ftype, hardlink(e), rdev)
        yield e, (esize(e) if ftype == AE_IFREG else 0)
        n += 1
        if progress and n % _PROGRESS_EVERY == 0:
            progress(position(), size)
    if progress:
        progress(size, size)


def scan(archive: Path, *, progress: _Progress = None) -> UnpackResult:
    """Check every entry of ``archive`` against the unpack rules (reading all of
    its data, so damage is found too) without writing anything.
    ``progress(done, total)`` gets bytes of the archive file read."""
    archive = Path(archive)
    count = total = 0
    with L.utf8_locale(), _reader(archive) as (a, position, size):
        for _e, n in _entries(archive, a, position, size, progress):
            count += 1
            total += n
            if n and L.read_data_skip(a) < L.WARN:
                raise _damaged(archive, a)
    return UnpackResult(file_count=count, unpacked_size=total)


def unpack(archive: Path, dest: Path, *, progress: _Progress = None) -> UnpackResult:
    """Unpack ``archive`` into ``dest``, which must not exist or be an empty
    directory.  ``progress(done, total)`` gets bytes of the archive file read."""
    archive, dest = Path(archive), Path(dest).absolute()
    made = _prepare(dest)
    before = os.lstat(dest)
    cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with L.utf8_locale(), _reader(archive) as (a, position, size):
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
    """The extraction loop; the working directory is the destination."""
    root = os.geteuid() == 0
    w = L.write_disk_new()
    buf, n, off = ctypes.c_void_p(), ctypes.c_size_t(), ctypes.c_int64()
    pbuf, pn, poff = ctypes.byref(buf), ctypes.byref(n), ctypes.byref(off)
    read_block, write_block = L.read_data_block, L.write_data_block
    write_header, finish = L.write_header, L.write_finish_entry
    count = total = 0
    root_mtime: int | None = None
    try:
        L.check(w, L.write_disk_set_options(w, _SAFE | _RESTORE | (L.EXTRACT_OWNER if root
                                                                     else 0)), "disk options")
        for e, length in _entries(archive, a, position, size, progress):
            if write_header(w, e) < L.WARN:
                raise UnsafeArchiveError(display(L.entry_pathname(e) or b"?"), L.message(w))
            if length:
                while True:
                    r = read_block(a, pbuf, pn, poff)
                    if r == L.EOF:
                        break
                    if r < L.OK:
                        raise _damaged(archive, a)
                    if write_block(w, buf, n, off) < L.OK:
                        _write_error(w, e)
            r = finish(w)
            if r < L.OK and (root or r < L.WARN):
                _write_error(w, e)
            if count == 0 and L.entry_pathname(e) in _ROOT_NAMES:
                root_mtime = L.entry_mtime(e)
            count += 1
            total += length
        if L.write_close(w) < (L.OK if root else L.WARN):
            raise ArchiveError(f"cannot finish unpacking {archive}: {L.message(w)}")
    finally:
        L.write_free(w)
    return UnpackResult(file_count=count, unpacked_size=total), root_mtime


_ROOT_NAMES = (b".", b"./")


def _write_error(w: int, e: int) -> None:
    raise ArchiveError(f"cannot unpack {display(L.entry_pathname(e) or b'?')!r}: "
                       f"{L.message(w)}", hint="check free space and the target filesystem")


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
