"""``vzpkg verify``: re-check a stored cache against its manifest and signature."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import libarchive

from vzpkg import archive
from vzpkg.core.errors import ArchiveError, GpgError, StoreError, UnsafeArchiveError
from vzpkg.core.files import sha256_file
from vzpkg.core.gpg import Keyring
from vzpkg.store.manifest import Manifest, parse_name
from vzpkg.template.model import Key

if TYPE_CHECKING:
    from vzpkg.store.cachestore import CacheStore


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify`` found; ``ok`` when there are no problems."""

    name: str
    problems: tuple[str, ...]
    notes: tuple[str, ...] = ()
    signer: str | None = None
    manifest: Manifest | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "ok": self.ok, "problems": list(self.problems),
                "notes": list(self.notes), "signer": self.signer,
                "serial": self.manifest.serial if self.manifest else None,
                "sha256": self.manifest.sha256 if self.manifest else None}


def verify_cache(store: CacheStore, name: str, *,
                 trusted_keys: Sequence[Key] = ()) -> VerifyReport:
    """Check everything about cache *name* that can be checked; never raises for damage."""
    parse_name(name)
    problems: list[str] = []
    notes: list[str] = []
    try:
        m = store.manifest(name)
    except StoreError as exc:
        return VerifyReport(name, (f"bad manifest: {exc.message}",))
    if m is None:
        if store.tarball(name) is None:
            return VerifyReport(name, (f"no cache named {name!r} in {store.dir}",))
        return VerifyReport(name, (f"missing manifest {store.manifest_path(name).name}",))
    tarball = store.dir / m.tarball
    if not tarball.is_file():
        return VerifyReport(name, (f"missing tarball {m.tarball}",), manifest=m)
    size = tarball.stat().st_size
    if size != m.size:
        problems.append(f"size mismatch: {m.tarball} is {size} bytes, manifest says {m.size}")
    digest = sha256_file(tarball)
    if digest != m.sha256:
        problems.append(f"sha256 mismatch: {m.tarball} has {digest}, manifest says "
                        f"{m.sha256}")
    problems += _scan(tarball, m)
    signer = None
    asc = tarball.with_name(tarball.name + ".asc")
    if m.signature:
        if not asc.is_file():
            problems.append(f"missing signature {m.signature} named by the manifest")
        elif not trusted_keys:
            notes.append(f"signature {m.signature} not checked: no trusted key given")
        else:
            try:
                signer = _check_signature(tarball, asc, trusted_keys)
            except GpgError as exc:
                problems.append(f"bad signature: {exc.message}")
    elif asc.is_file():
        notes.append(f"{asc.name} exists but the manifest names no signature; ignored")
    return VerifyReport(name, tuple(problems), tuple(notes), signer, m)


def _check_signature(tarball: Path, asc: Path, keys: Sequence[Key]) -> str:
    with Keyring() as kr:
        fprs = [kr.import_pinned(k.armored, k.fingerprint, source=str(k.file)) for k in keys]
        return kr.verify_detached(tarball, asc, fprs)


def _scan(tarball: Path, m: Manifest) -> list[str]:
    """Every entry safe, and the counts the manifest promises."""
    try:
        res = archive.scan(tarball)
    except UnsafeArchiveError as exc:
        return [f"unsafe entry {exc.entry!r}: {exc.reason}"]
    except ArchiveError as exc:
        return [f"unreadable archive: {exc.message}"]
    except (libarchive.ArchiveError, OSError) as exc:
        return [f"unreadable archive: {exc}"]
    problems = []
    if res.file_count != m.file_count:
        problems.append(f"file count: the archive has {res.file_count} entries, the "
                        f"manifest says {m.file_count}")
    if res.unpacked_size != m.unpacked_size:
        problems.append(f"unpacked size: the archive holds {res.unpacked_size} bytes, the "
                        f"manifest says {m.unpacked_size}")
    return problems
