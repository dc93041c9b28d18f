"""Values that several layers share: the archive packs with a :class:`Compression`,
the store and the build both list :class:`InstalledPackage`, and cache names and
templates both speak of :func:`host_arch`."""

from __future__ import annotations

import os
from enum import StrEnum
from typing import NamedTuple

ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64", "i686": "i386"}


class Compression(StrEnum):
    ZSTD = "zstd"
    XZ = "xz"
    GZIP = "gzip"

    @property
    def suffix(self) -> str:
        return {"zstd": ".tar.zst", "xz": ".tar.xz", "gzip": ".tar.gz"}[self.value]


class InstalledPackage(NamedTuple):
    """A package installed in a cache: name, version, architecture."""

    name: str
    version: str
    arch: str


def host_arch() -> str:
    """This machine's architecture in vzpkg's names (x86_64, aarch64, ...)."""
    m = os.uname().machine    # what platform.machine() returns, without importing it
    return ARCH_ALIASES.get(m, m)
