"""Shared fixtures for the cache store tests: manifests and staged files."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

from vzpkg.core.types import Compression, InstalledPackage
from vzpkg.store.cachestore import CacheStore
from vzpkg.store.manifest import Manifest, parse_name

NAME = "testos-1.0-x86_64-minimal"


def make_manifest(name: str = NAME, *, data: bytes = b"", serial: int = 1,
                  compression: Compression = Compression.ZSTD) -> Manifest:
    p = parse_name(name)
    return Manifest(
        name=name, distribution=p.distribution, release=p.release, arch=p.arch,
        set_name=p.set_name, serial=serial, plan_digest="a" * 64, repo_digest=None,
        source_date=1700000000, backend="test", tools={"vzpkg": "0.1.0"},
        packages=(InstalledPackage("base-files", "12.4", "amd64"),),
        file_count=1, unpacked_size=len(data), tarball=name + compression.suffix,
        compression=compression.value, size=len(data),
        sha256=hashlib.sha256(data).hexdigest(), signature=None,
        created="2024-01-01T00:00:00Z")


def stage_bytes(store: CacheStore, data: bytes, name: str = NAME,
                compression: Compression = Compression.ZSTD) -> tuple[Path, Manifest]:
    """A staged file holding *data* and a manifest describing it."""
    staged = store.staging(name, compression)
    staged.write_bytes(data)
    return staged, make_manifest(name, data=data, compression=compression)


def commit_bytes(store: CacheStore, data: bytes, name: str = NAME) -> Manifest:
    staged, m = stage_bytes(store, data, name)
    return store.commit(name, staged, m).manifest


def with_serial(m: Manifest, serial: int) -> Manifest:
    return replace(m, serial=serial)
