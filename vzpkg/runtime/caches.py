"""Finding a VE's cache (``--ostemplate``) and unpacking it.

A cache is looked up by name in vzpkg's cache directory (``--cache-dir``,
``$VZPKG_CACHE_DIR``, configuration) and then in ``VZ_ROOT/template/cache``.
The short form ``debian-12`` means ``debian-12-<host arch>-minimal``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from vzpkg.core.errors import VeError, VzError

CHUNK = 1 << 20


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
        return self._check(file_sha256(self.tarball))

    def unpack_into(self, dest: Path) -> str:
        """Hash the tarball, check it against the manifest, then unpack into the
        existing empty directory *dest*; return the digest.

        The file unpacked is the one hashed (read again through the same open
        descriptor): a tarball replaced after the check is not what is unpacked.
        On a mismatch nothing is unpacked."""
        fd = os.open(self.tarball, os.O_RDONLY | os.O_CLOEXEC)
        try:
            digest = self._check(fd_sha256(fd))
            unpack(Path(f"/proc/self/fd/{fd}"), dest, shown=self.tarball)
        finally:
            os.close(fd)
        return digest

    def _check(self, actual: str) -> str:
        if self.sha256 and actual != self.sha256:
            raise VeError(f"cache {self.name} ({self.tarball}) does not match its manifest "
                          f"(sha256 {actual}, the manifest says {self.sha256}); "
                          "nothing was unpacked",
                          hint=f"rebuild or pull the cache again: vzpkg build {self.name} "
                               f"or vzpkg pull {self.name}")
        return actual


def file_sha256(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return fd_sha256(fd)
    finally:
        os.close(fd)


def fd_sha256(fd: int) -> str:
    """The sha256 of the whole file open as *fd* (read from its start, 1 MiB at
    a time, without moving the descriptor's offset)."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    pos = 0
    while n := os.preadv(fd, [buf], pos):
        h.update(view[:n])
        pos += n
    return h.hexdigest()


def find_cache(name: str, dirs: list[Path]) -> CacheRef | None:
    """The cache *name* (short forms allowed) in the first of *dirs* that has it."""
    # here, not at the top: only 'vzctl create' looks for a cache; start, exec and
    # the rest (and vzlist) need neither manifests nor the store
    from vzpkg.store.cachestore import CacheStore
    from vzpkg.store.manifest import expand_name
    full = expand_name(name)
    for d in dirs:
        store = CacheStore(d)
        tb = store.tarball(full)
        if tb is not None:
            m = store.manifest(full)
            return CacheRef(full, tb, m.sha256 if m is not None else None)
    return None


def unpack(tarball: Path, dest: Path, *, shown: Path | None = None) -> None:
    """Unpack *tarball* into the existing empty directory *dest* (securely: see
    :func:`vzpkg.archive.unpack`; on refusal nothing is left in *dest*).  Errors
    name *shown* instead of *tarball* (a ``/proc/self/fd`` path) when given."""
    from vzpkg import archive  # libarchive: only 'vzctl create' unpacks
    try:
        archive.unpack(tarball, dest)
    except VzError as exc:
        if shown is not None:
            exc.message = exc.message.replace(str(tarball), str(shown))
            exc.args = (exc.message,)
        raise
