"""Reproducible packing of a directory tree into a compressed pax archive.

What makes two packs of the same tree byte-identical:

* order: depth-first, a directory before its contents, the entries of each
  directory sorted by their names' bytes (GNU tar's ``--sort=name`` order);
  names are ``./``, ``./etc``, ``./etc/passwd`` ...;
* metadata: numeric uid/gid only (no user or group names), mode with the
  setuid/setgid/sticky bits, mtime ``min(mtime, source_date)`` in whole seconds,
  no atime, ctime or birth time, no file flags, no sparse maps; extended
  attributes (including ``security.capability`` and POSIX ACLs) sorted by name;
* hard links: the first name in that order carries the data, later names are
  hard-link entries pointing to it;
* compression: zstd always runs in libzstd's multi-threaded mode (its output
  does not depend on the number of worker threads, only on the level and the
  libzstd version), xz always uses liblzma's multi-threaded block encoder with
  2 to 8 threads (likewise), gzip writes no timestamp and no file name;
* the calling thread's locale is fixed to C.UTF-8 while libarchive runs.

The tree is walked without following symlinks and without descending into
directories on another filesystem (a leftover mount in a build tree is packed
as an empty directory).  Sockets are skipped, as GNU tar does.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import queue
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vzpkg.archive import _lib as L
from vzpkg.core.errors import ArchiveError
from vzpkg.core.types import Compression

# zstd's own default; fast enough to pack a Debian tree in about a second.  Caches
# that are published once and pulled many times may warrant level=19.
DEFAULT_LEVEL = {Compression.ZSTD: 3, Compression.XZ: 6, Compression.GZIP: 6}
LEVEL_RANGE = {Compression.ZSTD: (1, 22), Compression.XZ: (0, 9), Compression.GZIP: (1, 9)}

_CHUNK = 1 << 20
_OUT_BLOCK = 1 << 20
_PROGRESS_STEP = 4 << 20


@dataclass(frozen=True)
class PackResult:
    """What :func:`pack` wrote.  ``file_count`` counts every archive entry
    (directories, links and devices too); ``unpacked_size`` is the bytes of file
    data, each hard-linked file counted once."""

    path: Path
    sha256: str
    file_count: int
    unpacked_size: int
    compressed_size: int


_Item = tuple[bytes, bytes, os.stat_result]      # (name in archive, path on disk, lstat)


def _walk(root: bytes) -> list[_Item]:
    """Every entry under ``root`` in archive order, with its lstat."""
    root_st = os.lstat(root)
    dev = root_st.st_dev
    out: list[_Item] = []
    stack: list[_Item] = [(b".", root, root_st)]
    while stack:
        item = stack.pop()
        out.append(item)
        name, path, st = item
        if not stat.S_ISDIR(st.st_mode) or (st.st_dev != dev and path != root):
            continue
        try:
            with os.scandir(path) as it:
                children = sorted((d.name, d) for d in it)
        except OSError as exc:
            raise ArchiveError(f"cannot read directory {os.fsdecode(path)}: {exc.strerror}",
                               hint="run as root, or fix the directory's permissions") from exc
        for cname, d in reversed(children):
            try:
                cst = d.stat(follow_symlinks=False)
            except FileNotFoundError:       # vanished while we walked
                continue
            if stat.S_ISSOCK(cst.st_mode):
                continue
            stack.append((name + b"/" + cname, d.path, cst))
    return out


def _options(compression: Compression, level: int | None, threads: int) -> bytes:
    lvl = DEFAULT_LEVEL[compression] if level is None else level
    lo, hi = LEVEL_RANGE[compression]
    if not lo <= lvl <= hi:
        raise ArchiveError(f"compression level {lvl} is out of range for {compression.value}",
                           hint=f"use a level from {lo} to {hi}")
    if threads < 0:
        raise ArchiveError(f"threads must be 0 (every core) or more, not {threads}")
    n = threads or len(os.sched_getaffinity(0)) or 1
    # xattrs as SCHILY.xattr records only (what GNU tar reads), not also as
    # LIBARCHIVE.xattr ones, which GNU tar warns about
    pax = "pax:xattrheader=SCHILY"
    if compression is Compression.ZSTD:
        return f"{pax},zstd:compression-level={lvl},zstd:threads={n}".encode()
    if compression is Compression.XZ:     # liblzma needs ~100 MB per thread at level 6
        return f"{pax},xz:compression-level={lvl},xz:threads={min(max(n, 2), 8)}".encode()
    return f"{pax},gzip:compression-level={lvl},gzip:!timestamp".encode()


def pack(src: Path, dest: Path, *, source_date: int,
         compression: Compression = Compression.ZSTD, level: int | None = None,
         threads: int = 0, progress: Callable[[int, int], None] | None = None) -> PackResult:
    """Pack the tree ``src`` into exactly the file ``dest`` (created or truncated,
    fsynced).  ``threads=0`` uses every core.  ``progress(done, total)`` gets bytes
    of file data.  On any error ``dest`` is removed and ArchiveError raised."""
    src, dest, compression = Path(src), Path(dest), Compression(compression)
    if not isinstance(source_date, int) or source_date < 0:
        raise ArchiveError(f"source date must be a non-negative integer, not {source_date!r}",
                           hint="pass seconds since the epoch, e.g. from SOURCE_DATE_EPOCH")
    options = _options(compression, level, threads)
    try:
        if not stat.S_ISDIR(os.lstat(src).st_mode):
            raise ArchiveError(f"{src}: not a directory", hint="pack a directory tree")
    except FileNotFoundError:
        raise ArchiveError(f"{src}: no such directory") from None
    if dest.absolute().resolve().is_relative_to(src.absolute().resolve()):
        raise ArchiveError(f"{dest}: the archive would be inside the tree it packs ({src})",
                           hint="write the archive outside the tree")
    with L.gc_paused():
        items = _walk(os.fsencode(src))
    total = sum(st.st_size for _, _, st in items
                if stat.S_ISREG(st.st_mode) and st.st_nlink == 1)
    total += sum({(st.st_dev, st.st_ino): st.st_size for _, _, st in items
                  if stat.S_ISREG(st.st_mode) and st.st_nlink > 1}.values())
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise ArchiveError(f"cannot create {dest}: {exc.strerror}") from exc
    try:
        with L.gc_paused():
            digest, size = _write(fd, items, options, compression.value, source_date, total,
                                  progress)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        dest.unlink(missing_ok=True)
        raise
    os.close(fd)
    return PackResult(path=dest, sha256=digest, file_count=len(items), unpacked_size=total,
                      compressed_size=size)


class _Sink:
    """The write callback.  Output blocks are hashed and written on a second
    thread (hashlib and os.write release the GIL), off the packing loop."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.hash = hashlib.sha256()
        self.size = 0
        self.error: BaseException | None = None
        self.callback = L.WRITE_CALLBACK(self._write)
        self.blocks: queue.Queue[bytes | None] = queue.Queue(8)
        self.thread = threading.Thread(target=self._drain, name="vzpkg-pack-out", daemon=True)
        self.thread.start()

    def _write(self, _a: int | None, _ctx: int | None, buf: int | None, n: int) -> int:
        if self.error is not None:
            return -1
        try:
            self.blocks.put(ctypes.string_at(buf or 0, n))
        except BaseException as exc:      # e.g. Ctrl-C: cannot unwind through C
            self.error = exc
            return -1
        self.size += n
        return n

    def _drain(self) -> None:
        while (data := self.blocks.get()) is not None:
            if self.error is not None:
                continue                      # keep draining so put() never blocks
            try:
                self.hash.update(data)
                view = memoryview(data)
                while view:
                    view = view[os.write(self.fd, view):]
            except BaseException as exc:
                self.error = exc

    def close(self) -> None:
        """Wait until every block is written."""
        self.blocks.put(None)
        self.thread.join()


def _write(fd: int, items: list[_Item], options: bytes, filt: str, source_date: int,
           total: int, progress: Callable[[int, int], None] | None) -> tuple[str, int]:
    sink = _Sink(fd)
    with L.utf8_locale():
        a = L.write_new()
        e = L.entry_new()
        try:
            L.check(a, L.write_set_format_pax(a), "pax format")
            L.check(a, L.write_add_filter[filt](a), f"{filt} filter")
            L.check(a, L.write_set_options(a, options), f"options {options.decode()}")
            L.write_set_bytes_per_block(a, _OUT_BLOCK)
            L.write_set_bytes_in_last_block(a, 1)
            if L.write_open(a, None, None, sink.callback, None) < L.WARN:
                raise ArchiveError(f"cannot start the archive: {L.message(a)}")
            try:
                _entries(a, e, items, source_date, total, progress, sink)
            except BaseException:
                L.write_fail(a)               # write_free() must not finish the stream
                raise
            if L.write_close(a) < L.WARN:
                _fail(a, sink, "finishing the archive")
        finally:
            L.entry_free(e)
            L.write_free(a)
            sink.close()
    if sink.error is not None:
        raise _as_error(sink.error)
    return sink.hash.hexdigest(), sink.size


def _as_error(exc: BaseException) -> BaseException:
    if isinstance(exc, OSError):
        return ArchiveError(f"cannot write the archive: {exc.strerror}",
                            hint="check free space and permissions on the destination")
    return exc


def _fail(a: int, sink: _Sink, what: str) -> None:
    if sink.error is not None:
        raise _as_error(sink.error)
    raise ArchiveError(f"{what}: {L.message(a)}")


def _entries(a: int, e: int, items: list[_Item], source_date: int, total: int,
             progress: Callable[[int, int], None] | None, sink: _Sink) -> None:
    # Hot loop: locals for every global lookup, one branch per kind of entry.
    clear, set_path, set_mode = L.entry_clear, L.entry_copy_pathname, L.entry_set_mode
    set_uid, set_gid, set_mtime, set_size = (L.entry_set_uid, L.entry_set_gid,
                                             L.entry_set_mtime, L.entry_set_size)
    write_header, write_data, finish = L.write_header, L.write_data, L.write_finish_entry
    S_ISREG, S_ISLNK, listxattr = stat.S_ISREG, stat.S_ISLNK, os.listxattr
    read, close = os.read, os.close
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_NOATIME if os.geteuid() == 0
                                                            else 0)
    links: dict[tuple[int, int], bytes] = {}
    done = last = 0
    if progress:
        progress(0, total)
    for name, path, st in items:
        mode = st.st_mode
        clear(e)
        set_path(e, name)
        set_mode(e, mode)
        if st.st_uid:                      # entry_clear() left 0
            set_uid(e, st.st_uid)
        if st.st_gid:
            set_gid(e, st.st_gid)
        mtime = int(st.st_mtime)
        set_mtime(e, mtime if mtime < source_date else source_date, 0)
        if S_ISREG(mode):
            size = st.st_size
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                first = links.get(key)
                if first is not None:      # a later name: a hard-link entry, no data
                    L.entry_copy_hardlink(e, first)
                    set_size(e, 0)
                    if write_header(a, e) < L.WARN or finish(a) < L.WARN:
                        _fail(a, sink, f"cannot add {os.fsdecode(path)} to the archive")
                    continue
                links[key] = name
            set_size(e, size)
            fd = _open(path, flags)
            try:
                if listxattr(fd):
                    _xattrs(e, fd)
                if write_header(a, e) < L.WARN:
                    _fail(a, sink, f"cannot add {os.fsdecode(path)} to the archive")
                if size <= _CHUNK:
                    data = read(fd, size)
                    if len(data) != size or write_data(a, data, size) < 0:
                        _short(a, sink, path, data, size)
                else:
                    _copy(a, fd, path, size, sink)
            finally:
                close(fd)
            done += size
            if progress and done - last >= _PROGRESS_STEP:
                progress(done, total)
                last = done
        else:
            if S_ISLNK(mode):
                L.entry_copy_symlink(e, os.readlink(path))
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                L.entry_set_rdevmajor(e, os.major(st.st_rdev))
                L.entry_set_rdevminor(e, os.minor(st.st_rdev))
            try:
                if listxattr(path, follow_symlinks=False):
                    _xattrs(e, path)
            except OSError:
                pass
            if write_header(a, e) < L.WARN:
                _fail(a, sink, f"cannot add {os.fsdecode(path)} to the archive")
        if finish(a) < L.WARN:
            _fail(a, sink, f"cannot add {os.fsdecode(path)} to the archive")
    if progress:
        progress(done, total)


def _xattrs(e: int, target: int | bytes) -> None:
    """Add the extended attributes of a path or fd, sorted by name."""
    follow = isinstance(target, int)          # an fd: the flag is not allowed
    for x in sorted(os.listxattr(target, follow_symlinks=follow)):
        try:
            v = os.getxattr(target, x, follow_symlinks=follow)
        except OSError:
            continue
        L.entry_xattr_add_entry(e, x.encode(), v, len(v))


def _open(path: bytes, flags: int) -> int:
    try:
        return os.open(path, flags)
    except OSError as exc:
        raise ArchiveError(f"cannot read {os.fsdecode(path)}: {exc.strerror}",
                           hint="run as root, or fix the file's permissions") from exc


def _short(a: int, sink: _Sink, path: bytes, data: bytes, size: int) -> None:
    if len(data) < size:
        raise ArchiveError(f"{os.fsdecode(path)} shrank while it was being packed",
                           hint="do not change the tree while packing it")
    _fail(a, sink, f"cannot add {os.fsdecode(path)} to the archive")


def _copy(a: int, fd: int, path: bytes, size: int, sink: _Sink) -> None:
    left = size
    while left:
        data = os.read(fd, left if left < _CHUNK else _CHUNK)
        if not data or L.write_data(a, data, len(data)) < 0:
            _short(a, sink, path, data, left)
        left -= len(data)
