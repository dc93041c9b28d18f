"""Thin ctypes bindings to libarchive for the hot loops of pack and unpack.

libarchive-c finds and loads the library; we declare our own prototypes on a
separate handle so that the per-entry calls carry no Python-level error
checking (we look at the return codes ourselves) and do not disturb
libarchive-c's own declarations.

Character sets: libarchive converts names between the archive's charset (UTF-8
in pax headers) and the *current locale*.  So that the bytes written do not
depend on the caller's locale, every archive handle is created and used inside
:func:`utf8_locale`, which switches only the calling thread to C.UTF-8.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import libarchive.ffi as _cffi

from vzpkg.core.errors import ArchiveError

# return codes
EOF = 1
OK = 0
WARN = -20
FAILED = -25
FATAL = -30

# file types (archive_entry.h, the same values as S_IF*)
AE_IFMT = 0o170000
AE_IFREG = 0o100000
AE_IFLNK = 0o120000
AE_IFSOCK = 0o140000
AE_IFCHR = 0o020000
AE_IFBLK = 0o060000
AE_IFDIR = 0o040000
AE_IFIFO = 0o010000

# archive_write_disk options
EXTRACT_OWNER = 0x0001
EXTRACT_PERM = 0x0002
EXTRACT_TIME = 0x0004
EXTRACT_ACL = 0x0020
EXTRACT_XATTR = 0x0080
EXTRACT_SECURE_SYMLINKS = 0x0100
EXTRACT_SECURE_NODOTDOT = 0x0200
EXTRACT_SECURE_NOABSOLUTEPATHS = 0x10000

_vp = ctypes.c_void_p
_cp = ctypes.c_char_p
_int = ctypes.c_int
_i64 = ctypes.c_int64
_size = ctypes.c_size_t
_ssize = ctypes.c_ssize_t
_uint = ctypes.c_uint

_lib = ctypes.CDLL(_cffi.libarchive_path)

WRITE_CALLBACK = ctypes.CFUNCTYPE(_ssize, _vp, _vp, _vp, _size)
READ_CALLBACK = ctypes.CFUNCTYPE(_ssize, _vp, _vp, _vp)


def _fn(name: str, argtypes: list[Any], restype: Any) -> Any:
    f = getattr(_lib, "archive_" + name)
    f.argtypes = argtypes
    f.restype = restype
    return f


error_string = _fn("error_string", [_vp], _cp)
errno = _fn("errno", [_vp], _int)
version_details = _fn("version_details", [], _cp)
filter_bytes = _fn("filter_bytes", [_vp, _int], _i64)

# entries
entry_new = _fn("entry_new", [], _vp)
entry_free = _fn("entry_free", [_vp], None)
entry_clear = _fn("entry_clear", [_vp], _vp)
entry_copy_pathname = _fn("entry_copy_pathname", [_vp, _cp], None)
entry_copy_symlink = _fn("entry_copy_symlink", [_vp, _cp], None)
entry_copy_hardlink = _fn("entry_copy_hardlink", [_vp, _cp], None)
entry_set_mode = _fn("entry_set_mode", [_vp, _uint], None)
entry_set_uid = _fn("entry_set_uid", [_vp, _i64], None)
entry_set_gid = _fn("entry_set_gid", [_vp, _i64], None)
entry_set_mtime = _fn("entry_set_mtime", [_vp, _i64, ctypes.c_long], None)
entry_set_size = _fn("entry_set_size", [_vp, _i64], None)
entry_set_rdevmajor = _fn("entry_set_rdevmajor", [_vp, _uint], None)
entry_set_rdevminor = _fn("entry_set_rdevminor", [_vp, _uint], None)
entry_xattr_add_entry = _fn("entry_xattr_add_entry", [_vp, _cp, _cp, _size], None)
entry_pathname = _fn("entry_pathname", [_vp], _cp)
entry_hardlink = _fn("entry_hardlink", [_vp], _cp)
entry_symlink = _fn("entry_symlink", [_vp], _cp)
entry_filetype = _fn("entry_filetype", [_vp], _uint)
entry_size = _fn("entry_size", [_vp], _i64)
entry_rdevmajor = _fn("entry_rdevmajor", [_vp], _uint)
entry_rdevminor = _fn("entry_rdevminor", [_vp], _uint)
entry_mtime = _fn("entry_mtime", [_vp], _i64)
entry_xattr_count = _fn("entry_xattr_count", [_vp], _int)
entry_xattr_reset = _fn("entry_xattr_reset", [_vp], _int)
entry_xattr_next = _fn("entry_xattr_next", [_vp, _vp, _vp, _vp], _int)

# writing archives
write_new = _fn("write_new", [], _vp)
write_set_format_pax = _fn("write_set_format_pax", [_vp], _int)
write_add_filter = {
    "zstd": _fn("write_add_filter_zstd", [_vp], _int),
    "xz": _fn("write_add_filter_xz", [_vp], _int),
    "gzip": _fn("write_add_filter_gzip", [_vp], _int),
}
write_set_options = _fn("write_set_options", [_vp, _cp], _int)
write_set_bytes_per_block = _fn("write_set_bytes_per_block", [_vp, _int], _int)
write_set_bytes_in_last_block = _fn("write_set_bytes_in_last_block", [_vp, _int], _int)
write_open = _fn("write_open", [_vp, _vp, _vp, WRITE_CALLBACK, _vp], _int)
write_header = _fn("write_header", [_vp, _vp], _int)
write_data = _fn("write_data", [_vp, _vp, _size], _ssize)
write_finish_entry = _fn("write_finish_entry", [_vp], _int)
write_close = _fn("write_close", [_vp], _int)
write_fail = _fn("write_fail", [_vp], _int)
write_free = _fn("write_free", [_vp], _int)

# reading archives
read_new = _fn("read_new", [], _vp)
read_support_format_tar = _fn("read_support_format_tar", [_vp], _int)
read_support_format_raw = _fn("read_support_format_raw", [_vp], _int)
read_support_filter_none = _fn("read_support_filter_none", [_vp], _int)
filter_count = _fn("filter_count", [_vp], _int)
read_data = _fn("read_data", [_vp, _vp, _size], _ssize)
read_support_filter = [
    _fn("read_support_filter_gzip", [_vp], _int),
    _fn("read_support_filter_xz", [_vp], _int),
    _fn("read_support_filter_zstd", [_vp], _int),
]
read_open_fd = _fn("read_open_fd", [_vp, _int, _size], _int)
read_open = _fn("read_open", [_vp, _vp, _vp, READ_CALLBACK, _vp], _int)
# Out-parameters are declared as plain pointers and passed as addresses
# (ctypes.addressof): converting byref()/POINTER arguments costs ~2 us a call.
read_next_header = _fn("read_next_header", [_vp, _vp], _int)
read_data_block = _fn("read_data_block", [_vp, _vp, _vp, _vp], _int)
read_extract2 = _fn("read_extract2", [_vp, _vp, _vp], _int)
read_data_skip = _fn("read_data_skip", [_vp], _int)
read_free = _fn("read_free", [_vp], _int)

# writing to disk
write_disk_new = _fn("write_disk_new", [], _vp)
write_disk_set_options = _fn("write_disk_set_options", [_vp, _int], _int)
write_data_block = _fn("write_data_block", [_vp, _vp, _size, _i64], _ssize)


def message(a: int | None, default: str = "unknown libarchive error") -> str:
    """libarchive's last error text for handle ``a``."""
    raw = error_string(a) if a else None
    return raw.decode("utf-8", "backslashreplace") if raw else default


def check(a: int, rc: int, what: str) -> int:
    """Raise ArchiveError when a set-up call fails (rc below WARN)."""
    if rc < WARN:
        raise ArchiveError(f"libarchive: {what}: {message(a)}")
    return rc


def versions() -> str:
    """e.g. 'libarchive 3.6.2 zlib/1.2.13 liblzma/5.4.1 ... libzstd/1.5.4'."""
    raw = version_details()
    return raw.decode() if raw else "libarchive (unknown version)"


# --- a per-thread UTF-8 locale ------------------------------------------------

_LC_CTYPE_MASK = 1 << 0          # glibc: LC_CTYPE == 0
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.newlocale.argtypes = [_int, _cp, _vp]
_libc.newlocale.restype = _vp
_libc.uselocale.argtypes = [_vp]
_libc.uselocale.restype = _vp
_utf8: list[int | None] = []


def _utf8_handle() -> int | None:
    if not _utf8:
        _utf8.append(_libc.newlocale(_LC_CTYPE_MASK, b"C.UTF-8", None) or None)
    return _utf8[0]


@contextmanager
def utf8_locale() -> Iterator[None]:
    """Run the body with the calling thread's LC_CTYPE set to C.UTF-8, so that
    libarchive writes and reads names the same way whatever the user's locale."""
    loc = _utf8_handle()
    if loc is None:          # no C.UTF-8 on this system: keep the process locale
        yield
        return
    old = _libc.uselocale(loc)
    try:
        yield
    finally:
        _libc.uselocale(old)


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection during a hot loop: it allocates many small
    objects and makes no cycles, and collections would only scan them."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def xattr_names(e: int) -> list[bytes]:
    """The names of the extended attributes an entry carries."""
    name, value, size = ctypes.c_char_p(), ctypes.c_void_p(), ctypes.c_size_t()
    refs = ctypes.addressof(name), ctypes.addressof(value), ctypes.addressof(size)
    out = []
    entry_xattr_reset(e)
    while entry_xattr_next(e, *refs) == OK:
        out.append(name.value or b"")
    return out
