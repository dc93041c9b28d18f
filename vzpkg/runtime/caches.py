"""Finding a VE's cache (``--ostemplate``) and unpacking it.

A cache is looked up by name in vzpkg's cache directory (``--cache-dir``,
``$VZPKG_CACHE_DIR``, configuration) and then in ``VZ_ROOT/template/cache``.
The short form ``debian-12`` means ``debian-12-<host arch>-minimal``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from vzpkg.errors import VeError


@dataclass(frozen=True)
class CacheRef:
    name: str
    tarball: Path
    sha256: str | None  # from the manifest, when there is one

    def digest(self) -> str:
        """The tarball's sha256: the manifest's, checked lazily by :meth:`verify`."""
        return self.sha256 or file_sha256(self.tarball)

    def verify(self) -> str:
        """Hash the tarball and compare with the manifest; return the digest."""
        actual = file_sha256(self.tarball)
        if self.sha256 and actual != self.sha256:
            raise VeError(f"cache {self.tarball} does not match its manifest "
                          f"(sha256 {actual}, manifest says {self.sha256})",
                          hint=f"rebuild or pull the cache again: vzpkg build {self.name}")
        return actual


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def find_cache(name: str, dirs: list[Path]) -> CacheRef | None:
    """The cache *name* (short forms allowed) in the first of *dirs* that has it."""
    # here, not at the top: only 'vzctl create' looks for a cache; start, exec and
    # the rest (and vzlist) need neither manifests nor the store
    from vzpkg.manifest import expand_name
    from vzpkg.store import CacheStore
    full = expand_name(name)
    for d in dirs:
        store = CacheStore(d)
        tb = store.tarball(full)
        if tb is not None:
            m = store.manifest(full)
            return CacheRef(full, tb, m.sha256 if m is not None else None)
    return None


def unpack(tarball: Path, dest: Path) -> None:
    """Unpack *tarball* into the existing empty directory *dest* (securely: see
    :func:`vzpkg.archive.unpack`; on refusal nothing is left in *dest*)."""
    from vzpkg import archive  # libarchive: only 'vzctl create' unpacks
    archive.unpack(tarball, dest)
