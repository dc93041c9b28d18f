"""Pruning the shared package cache: keep what the caches in the store came from.

Kept: every package file (``.deb`` of a pool, ``.rpm`` of dnf's cache) whose name,
version and architecture a current or ``-old`` cache's manifest lists, every index
that the cached InRelease of its suite still names, and everything else (InRelease
files, dnf's metadata).  Removed: other package files, by-hash indexes no InRelease
names any more, the unpacked payloads of packages not kept, and temporary files
left by killed downloads.  A build that needs
something removed downloads it again; ``--offline`` builds of the kept caches still
work.  Runs only while no build uses the cache (the builds' shared lock).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vzpkg.build.payloads import PAYLOAD_DIR, Payloads
from vzpkg.build.pkgcache import exclusive, sha256_entries, suite_dir
from vzpkg.core.errors import StoreError
from vzpkg.core.files import sha256_file
from vzpkg.store.cachestore import CacheStore
from vzpkg.store.manifest import Manifest


@dataclass(frozen=True)
class PruneReport:
    directory: Path
    removed: tuple[Path, ...]
    freed_bytes: int
    kept_packages: int
    dry_run: bool

    def to_json(self) -> dict[str, object]:
        return {"directory": str(self.directory), "dry_run": self.dry_run,
                "removed": [str(p) for p in self.removed], "freed_bytes": self.freed_bytes,
                "kept_packages": self.kept_packages}


def package_files(manifests: Iterable[Manifest]) -> set[str]:
    """The file names the manifests' packages were installed from (.deb and .rpm
    names; neither carries the epoch)."""
    names: set[str] = set()
    for m in manifests:
        for p in m.packages:
            version = p.version.split(":", 1)[-1]
            names.add(f"{p.name}_{version}_{p.arch}.deb")
            names.add(f"{p.name}-{version}.{p.arch}.rpm")
    return names


def _manifests(store: CacheStore) -> list[Manifest]:
    out: list[Manifest] = []
    for name in store.names():
        for load in (store.manifest, store.old_manifest):
            try:
                m = load(name)
            except StoreError as exc:
                raise StoreError(f"cannot tell what cache {name} needs: {exc.message}",
                                 hint=f"fix or remove it (vzpkg remove {name}) first; "
                                      "nothing was pruned") from None
            if m is not None:
                out.append(m)
    return out


def _stale(pkg_cache: Path, wanted: set[str]) -> Iterator[Path]:
    releases: dict[Path, set[str]] = {}
    for f in sorted(pkg_cache.rglob("*")):
        parts = f.relative_to(pkg_cache).parts
        if not f.is_file() or f.is_symlink() or ".sessions" in parts or PAYLOAD_DIR in parts:
            continue
        if f.name.startswith(".part-"):
            yield f
        elif f.suffix in (".deb", ".rpm"):
            if urllib.parse.unquote(f.name) not in wanted:
                yield f
        elif f.parent.name == "SHA256" and f.parent.parent.name == "by-hash":
            suite = suite_dir(f, pkg_cache)
            if suite is None:
                continue
            if suite not in releases:
                releases[suite] = set(sha256_entries(
                    (suite / "InRelease").read_text(encoding="utf-8", errors="replace")
                ).values())
            if f.name not in releases[suite]:
                yield f


def prune(cache_dir: Path, pkg_cache: Path, *, dry_run: bool = False) -> PruneReport:
    """Remove from *pkg_cache* what no cache in *cache_dir*'s store needs."""
    store = CacheStore(cache_dir)
    wanted = package_files(_manifests(store))
    if not pkg_cache.is_dir():
        return PruneReport(pkg_cache, (), 0, 0, dry_run)
    with exclusive(pkg_cache):
        removed = list(_stale(pkg_cache, wanted))
        gone = set(removed)
        kept_files = [f for f in pkg_cache.rglob("*") if f.suffix in (".deb", ".rpm")
                      and f not in gone and f.is_file()]
        # a payload goes with its package (vzpkg.build.payloads)
        removed += Payloads(pkg_cache).unwanted(
            {sha256_file(f) for f in kept_files if f.suffix == ".deb"})
        freed = 0
        for f in removed:
            freed += f.stat().st_size
            if not dry_run:
                f.unlink()
        kept = len(kept_files)
    return PruneReport(pkg_cache, tuple(removed), freed, kept, dry_run)
