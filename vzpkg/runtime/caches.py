"""Finding a VE's cache (``--ostemplate``) and unpacking it.

A cache is looked up by name in vzpkg's cache directory (``--cache-dir``,
``$VZPKG_CACHE_DIR``, configuration) and then in ``VZ_ROOT/template/cache``.
The short form ``debian-12`` means ``debian-12-<host arch>-minimal``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vzpkg.errors import ArchiveError, VeError

SUFFIXES = (".tar.zst", ".tar.xz", ".tar.gz")


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


def candidates(name: str) -> list[str]:
    parts = name.split("-")
    if len(parts) == 2:
        return [name, f"{name}-{os.uname().machine}-minimal"]
    return [name]


def find_cache(name: str, dirs: list[Path]) -> CacheRef | None:
    for cand in candidates(name):
        for d in dirs:
            for suf in SUFFIXES:
                tb = d / f"{cand}{suf}"
                if tb.is_file():
                    return CacheRef(cand, tb, _manifest_sha(d / f"{cand}.manifest.json"))
    return None


def _manifest_sha(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    sha = data.get("sha256") if isinstance(data, dict) else None
    return sha if isinstance(sha, str) else None


def unpack(tarball: Path, dest: Path) -> None:
    """Unpack *tarball* into the existing empty directory *dest*."""
    try:
        from vzpkg import archive  # type: ignore[attr-defined, unused-ignore]
        archive.unpack(tarball, dest)
        return
    except ImportError:
        pass
    r = subprocess.run(["tar", "-x", "-p", "--numeric-owner", "--xattrs",
                        "--xattrs-include=*", "-f", str(tarball), "-C", str(dest)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise ArchiveError(f"cannot unpack {tarball}: {r.stderr.strip()}")
