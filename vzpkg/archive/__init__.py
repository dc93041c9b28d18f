"""Reproducible pack and secure unpack of OS trees, with libarchive.

``pack`` writes a deterministic pax archive (zstd, xz or gzip); ``unpack``
extracts one safely into an empty directory; ``scan`` applies the same safety
rules without writing anything.  The rules are documented in
:mod:`vzpkg.archive.packing`, :mod:`vzpkg.archive.unpacking` and
:mod:`vzpkg.archive.policy`.
"""

from vzpkg.archive._lib import versions as tool_versions
from vzpkg.archive.packing import DEFAULT_LEVEL, PackResult, pack
from vzpkg.archive.policy import STANDARD_DEVICES
from vzpkg.archive.unpacking import UnpackResult, scan, unpack

__all__ = ["DEFAULT_LEVEL", "STANDARD_DEVICES", "PackResult", "UnpackResult", "pack", "scan",
           "tool_versions", "unpack"]
