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
  does not depend on the number of worker threads, only on the level), xz always
  uses liblzma's multi-threaded block encoder (likewise), gzip writes no
  timestamp and no file name;
* the calling thread's locale is fixed to C.UTF-8 while libarchive runs.

The tree is walked without following symlinks and without descending into
directories on another filesystem (a leftover mount in a build tree is packed
as an empty directory).  Sockets are skipped, as GNU tar does.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vzpkg.archive import _lib as L
from vzpkg.errors import ArchiveError
from vzpkg.metadata.model import Compression

# zstd's own default; fast enough to pack a Debian tree in about a second.  Caches
# that are published once and pulled many times may warrant level=19.
DEFAULT_LEVEL = {Compression.ZSTD: 3, Compression.XZ: 6, Compression.GZIP: 6}
LEVEL_RANGE = {Compression.ZSTD: (1, 22), Compression.XZ: (0, 9), Compression.GZIP: (1, 9)}

_CHUNK = 1 << 20
_OUT_BLOCK = 1 << 16
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
    n = threads or os.cpu_count() or 1
    if compression is Compression.ZSTD:
        return f"zstd:compression-level={lvl},zstd:threads={n}".encode()
    if compression is Compression.XZ:
        return f"xz:compression-level={lvl},xz:threads={max(n, 2)}".encode()
    return f"gzip:compression-level={lvl},gzip:!timestamp".encode()


def pack(src: Path, dest: Path, *, source_date: int,
         compression: Compression = Compression.ZSTD, level: int | None = None,
         threads: int = 0, progress: Callable[[int, int], None] | None = None) -> PackResult:
    """Pack the tree ``src`` into exactly the file ``dest`` (created or truncated,
    fsynced).  ``threads=0`` uses every core.  ``progress(done, total)`` gets bytes
    of file data.  On any error ``dest`` is removed and ArchiveError raised."""
    src, dest = Path(src), Path(dest)
    if not isinstance(source_date, int) or source_date < 0:
        raise ArchiveError(f"source date must be a non-negative integer, not {source_date!r}",
                           hint="pass seconds since the epoch, e.g. from SOURCE_DATE_EPOCH")
    options = _options(Compression(compression), level, threads)
    try:
        if not stat.S_ISDIR(os.lstat(src).st_mode):
            raise ArchiveError(f"{src}: not a directory", hint="pack a directory tree")
    except FileNotFoundError:
        raise ArchiveError(f"{src}: no such directory") from None
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
        digest, size = _write(fd, items, options, compression.value, source_date, total, progress)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        dest.unlink(missing_ok=True)
        raise
    os.close(fd)
    return PackResult(path=dest, sha256=digest, file_count=len(items), unpacked_size=total,
                      compressed_size=size)


class _Sink:
    """The write callback: hash and write libarchive's output blocks."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.hash = hashlib.sha256()
        self.size = 0
        self.error: BaseException | None = None
        self.callback = L.WRITE_CALLBACK(self._write)

    def _write(self, _a: int | None, _ctx: int | None, buf: int | None, n: int) -> int:
        try:
            data = ctypes.string_at(buf or 0, n)
            self.hash.update(data)
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]
            self.size += n
            return n
        except BaseException as exc:       # cannot unwind through C
            self.error = exc
            return -1


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
            _entries(a, e, items, source_date, total, progress, sink)
            if L.write_close(a) < L.WARN:
                _fail(a, sink, "finishing the archive")
        finally:
            L.entry_free(e)
            L.write_free(a)
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
    # Hot loop: locals for every global lookup.
    clear, set_path, set_mode = L.entry_clear, L.entry_copy_pathname, L.entry_set_mode
    set_uid, set_gid, set_mtime, set_size = (L.entry_set_uid, L.entry_set_gid,
                                             L.entry_set_mtime, L.entry_set_size)
    add_xattr, write_header, finish = L.entry_xattr_add_entry, L.write_header, L.write_finish_entry
    S_ISREG, S_ISLNK, listxattr, getxattr = (stat.S_ISREG, stat.S_ISLNK, os.listxattr,
                                             os.getxattr)
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    addr = ctypes.addressof((ctypes.c_char * _CHUNK).from_buffer(buf))
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
        set_uid(e, st.st_uid)
        set_gid(e, st.st_gid)
        mtime = int(st.st_mtime)
        set_mtime(e, mtime if mtime < source_date else source_date, 0)
        data = False
        if S_ISREG(mode):
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                first = links.get(key)
                if first is None:
                    links[key] = name
                    data = True
                else:
                    L.entry_copy_hardlink(e, first)
                    set_size(e, 0)
            else:
                data = True
            if data:
                set_size(e, st.st_size)
        elif S_ISLNK(mode):
            L.entry_copy_symlink(e, os.readlink(path))
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            L.entry_set_rdevmajor(e, os.major(st.st_rdev))
            L.entry_set_rdevminor(e, os.minor(st.st_rdev))
        try:
            xnames = listxattr(path, follow_symlinks=False)
        except OSError:
            xnames = []
        if xnames:
            for x in sorted(xnames):
                try:
                    v = getxattr(path, x, follow_symlinks=False)
                except OSError:
                    continue
                add_xattr(e, x.encode(), v, len(v))
        if write_header(a, e) < L.WARN:
            _fail(a, sink, f"cannot add {os.fsdecode(path)} to the archive")
        if data and st.st_size:
            _copy(a, path, st.st_size, flags, view, addr, sink)
            done += st.st_size
            if progress and done - last >= _PROGRESS_STEP:
                progress(done, total)
                last = done
        if finish(a) < L.WARN:
            _fail(a, sink, f"cannot add {os.fsdecode(path)} to the archive")
    if progress:
        progress(done, total)


def _copy(a: int, path: bytes, size: int, flags: int, view: memoryview, addr: int,
          sink: _Sink) -> None:
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ArchiveError(f"cannot read {os.fsdecode(path)}: {exc.strerror}",
                           hint="run as root, or fix the file's permissions") from exc
    try:
        left = size
        write_data = L.write_data
        while left:
            n = os.readv(fd, [view[:left] if left < _CHUNK else view])
            if n == 0:
                raise ArchiveError(f"{os.fsdecode(path)} shrank while it was being packed",
                                   hint="do not change the tree while packing it")
            if write_data(a, addr, n) < 0:
                _fail(a, sink, f"cannot add {os.fsdecode(path)} to the archive")
            left -= n
    finally:
        os.close(fd)
