"""Reproducible pack and secure unpack of OS trees, with libarchive.

The API other modules call::

    pack(src, dest, *, source_date, compression=Compression.ZSTD, level=None,
         threads=0, progress=None) -> PackResult
        Writes exactly ``dest`` (created or truncated, fsynced; removed again on
        any error); the caller does temporary names and the atomic rename.
        Same tree + same source_date + same level -> byte-identical file.
    unpack(archive, dest, *, progress=None) -> UnpackResult
        ``dest`` must not exist or be an empty directory.  Plain tar, .gz, .xz
        and .zst, recognised by content.  A refused entry raises
        UnsafeArchiveError(entry, reason) and removes everything unpacked.
    scan(archive, *, progress=None) -> UnpackResult
        The same safety rules, reading everything, writing nothing.
    tool_versions() -> str
        "libarchive 3.6.2 zlib/... liblzma/... libzstd/..." for manifests.

``progress(done, total)``: bytes of file data for ``pack``, bytes of the
archive file read for ``unpack`` and ``scan``.  Errors are VzError subclasses
(ArchiveError, UnsafeArchiveError) that name the file or entry.

The rules are in :mod:`vzpkg.archive.packing` (what makes archives
reproducible), :mod:`vzpkg.archive.policy` (what is refused) and
:mod:`vzpkg.archive.unpacking` (how it is restored).
"""

from vzpkg.archive._lib import versions as tool_versions
from vzpkg.archive.packing import DEFAULT_LEVEL, PackResult, pack
from vzpkg.archive.policy import STANDARD_DEVICES
from vzpkg.archive.unpacking import UnpackResult, scan, unpack

__all__ = ["DEFAULT_LEVEL", "STANDARD_DEVICES", "PackResult", "UnpackResult", "pack", "scan",
           "tool_versions", "unpack"]
