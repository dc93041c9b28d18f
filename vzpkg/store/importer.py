"""``vzpkg import``: an external root file system tarball becomes a cache.

The tarball (plain, gzip, xz or zstd, recognised by content) is safety-checked
entry by entry, unpacked into a private scratch directory in the cache
directory, its installed packages are read from the tree, and it is packed again
reproducibly and committed with a manifest (backend ``import``).  All of it runs
under the cache's lock; on any failure or Ctrl-C the scratch directory and the
staged file are removed and the previous cache is untouched.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from vzpkg import __version__, archive
from vzpkg.core.errors import StoreError
from vzpkg.core.types import Compression
from vzpkg.store.cachestore import CacheEntry, CacheStore
from vzpkg.store.manifest import Manifest, parse_name, tarball_name
from vzpkg.store.packages import read_installed

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


class Progress:
    """(done, total) callbacks turned into a line every few seconds."""

    def __init__(self, say: Say, what: str, *, every: float = 2.0) -> None:
        self.say, self.what, self.every = say, what, every
        self.last = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            pct = f"{100 * done // total}%" if total > 0 else f"{done}"
            self.say(f"{self.what}: {pct}")


def newest_mtime(tree: Path) -> int:
    """The newest mtime of any entry below *tree* (the unpacked archive; unpack keeps
    mtimes).  The top directory itself is left out: an archive need not have it."""
    newest = 0
    for top, dirs, files in os.walk(tree):
        for n in (*dirs, *files):
            newest = max(newest, int(os.lstat(os.path.join(top, n)).st_mtime))
    return newest


def env_source_date(env: Mapping[str, str]) -> int | None:
    """$SOURCE_DATE_EPOCH when set (StoreError when it is not a number)."""
    raw = env.get("SOURCE_DATE_EPOCH")
    if raw is None or raw == "":
        return None
    if not raw.isdigit():
        raise StoreError(f"SOURCE_DATE_EPOCH={raw!r} is not a whole number of seconds",
                         hint="set it to a Unix time, e.g. $(date +%s), or unset it")
    return int(raw)


def import_tarball(store: CacheStore, source: Path, name: str, *,
                   compression: Compression = Compression.ZSTD,
                   source_date: int | None = None, say: Say = _quiet) -> CacheEntry:
    """Turn the root file system tarball *source* into cache *name*."""
    parts = parse_name(name)
    if not source.is_file():
        raise StoreError(f"{source}: no such file",
                         hint="give the path of a root file system tarball")
    if os.geteuid() != 0:
        raise StoreError("importing a root file system needs root, to keep its file "
                         "owners, modes and device nodes", hint="run vzpkg import as root")
    if source_date is None:
        source_date = env_source_date(os.environ)
    store.dir.mkdir(parents=True, exist_ok=True)
    store.cleanup_stale()
    with store.lock(name):
        say(f"checking every entry of {source}")
        checked = archive.scan(source, progress=Progress(say, "checking"))
        scratch = store.staging_dir(name)
        staged = store.staging(name, compression)
        try:
            tree = scratch / "root"
            say(f"unpacking {checked.file_count} entries")
            archive.unpack(source, tree, progress=Progress(say, "unpacking"))
            date = source_date if source_date is not None else newest_mtime(tree)
            packages = read_installed(tree)
            say(f"found {len(packages)} installed packages; packing {name}")
            packed = archive.pack(tree, staged, source_date=date, compression=compression,
                                  progress=Progress(say, "packing"))
            manifest = Manifest(
                name=name, distribution=parts.distribution, release=parts.release,
                arch=parts.arch, set_name=parts.set_name, serial=store.next_serial(name),
                plan_digest=None, repo_digest=None, source_date=date, backend="import",
                tools={"vzpkg": __version__, "libarchive": archive.tool_versions()},
                packages=packages, file_count=packed.file_count,
                unpacked_size=packed.unpacked_size,
                tarball=tarball_name(name, compression), compression=compression.value,
                size=packed.compressed_size, sha256=packed.sha256)
            store.abort(scratch)
            return store.commit(name, staged, manifest)
        finally:
            if scratch.exists():
                store.abort(scratch)
            if staged.exists():
                store.abort(staged)
