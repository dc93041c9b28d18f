"""The cache directory: names, manifests, atomic replace with ``-old``, locking.

Layout of ``cache_dir``::

    <name>.tar.zst              the cache (or .tar.xz / .tar.gz)
    <name>.manifest.json        its manifest (vzpkg.store.manifest.Manifest)
    <name>.tar.zst.asc          detached signature, when signed
    <name>-old.*                the previous cache, same three files
    .locks/<name>.lock          fcntl lock per cache name (holds the holder's pid)
    .<name>.<hex>.tmp*          staged files and directories of running writers

Writers hold :meth:`CacheStore.lock` and call :meth:`CacheStore.commit`.  The
manifest is the commit point: commit first hard-links the current files to
``-old``, then removes the current manifest, renames the new tarball (and
signature) into place and only then renames the new manifest in.  A reader
therefore never finds a manifest beside a tarball it does not describe;
:meth:`CacheStore.open_cache` reads the manifest, opens the tarball and reads
the manifest again, so it always gets a matching pair (and the size checks it).
"""

from __future__ import annotations

import builtins
import contextlib
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager as ContextManager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, NamedTuple

from vzpkg.core.errors import StoreError
from vzpkg.core.files import fsync_path
from vzpkg.core.types import Compression
from vzpkg.store.lock import (
    held_here,
    hold,
    stderr_line,
    write_synced,
)
from vzpkg.store.manifest import Manifest, parse_name, tarball_name

if TYPE_CHECKING:   # verifying needs libarchive: imported by verify() only
    from vzpkg.store.verify import VerifyReport
    from vzpkg.template.model import Key  # a type only: pulls need not build it

MANIFEST_SUFFIX = ".manifest.json"
SIG_SUFFIX = ".asc"
OLD = "-old"
TEMP_RE = re.compile(r"^\.(?P<name>[a-z0-9._-]+)\.[0-9a-f]{16}\.tmp")


class CacheEntry(NamedTuple):
    """One committed cache: its manifest and where its files are."""

    name: str
    manifest: Manifest
    tarball: Path
    manifest_path: Path
    signature: Path | None

    @property
    def serial(self) -> int:
        return self.manifest.serial

    @property
    def size(self) -> int:
        return self.manifest.size


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False


class CacheStore:
    """The caches in one directory."""

    def __init__(self, cache_dir: Path) -> None:
        self.dir = Path(cache_dir)

    # --- paths -------------------------------------------------------------
    def manifest_path(self, name: str, *, old: bool = False) -> Path:
        return self.dir / f"{name}{OLD if old else ''}{MANIFEST_SUFFIX}"

    def _tarballs(self, name: str, *, old: bool = False) -> list[Path]:
        return [self.dir / tarball_name(name + (OLD if old else ""), c) for c in Compression]

    def _files(self, name: str, *, old: bool = False) -> list[Path]:
        tars = self._tarballs(name, old=old)
        return [*tars, *(t.with_name(t.name + SIG_SUFFIX) for t in tars),
                self.manifest_path(name, old=old)]

    def _lock_path(self, name: str) -> Path:
        return self.dir / ".locks" / f"{name}.lock"

    # --- reading -----------------------------------------------------------
    def tarball(self, name: str) -> Path | None:
        """The existing tarball of *name* (the manifest's when there is one)."""
        parse_name(name)
        with contextlib.suppress(StoreError):
            m = self.manifest(name)
            if m is not None and (self.dir / m.tarball).is_file():
                return self.dir / m.tarball
        return next((t for t in self._tarballs(name) if t.is_file()), None)

    def manifest(self, name: str) -> Manifest | None:
        """The manifest of *name*; None when there is none, StoreError when damaged."""
        parse_name(name)
        return self._load_manifest(self.manifest_path(name), name)

    def old_manifest(self, name: str) -> Manifest | None:
        """The manifest of the previous cache kept as ``<name>-old``."""
        parse_name(name)
        return self._load_manifest(self.manifest_path(name, old=True), name)

    def _load_manifest(self, path: Path, name: str) -> Manifest | None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"{path}: cannot read: {exc.strerror}") from None
        m = Manifest.loads(data, source=str(path))
        if m.name != name:
            raise StoreError(f"{path}: field 'name': {m.name!r} does not match the file name",
                             hint="a manifest must be stored as <its name>.manifest.json")
        return m

    def entry(self, name: str) -> CacheEntry | None:
        m = self.manifest(name)
        if m is None:
            return None
        sig = self.dir / m.signature if m.signature else None
        return CacheEntry(name, m, self.dir / m.tarball, self.manifest_path(name), sig)

    def names(self) -> list[str]:
        """Every current cache name with a tarball or a manifest (damaged ones too)."""
        found: set[str] = set()
        if not self.dir.is_dir():
            return []
        suffixes = (MANIFEST_SUFFIX, *(c.suffix for c in Compression))
        for p in self.dir.iterdir():
            if p.name.startswith("."):
                continue
            for suffix in suffixes:
                if p.name.endswith(suffix):
                    stem = p.name[: -len(suffix)]
                    with contextlib.suppress(StoreError):
                        parse_name(stem)
                        found.add(stem)
        return sorted(found)

    def list(self) -> list[CacheEntry]:
        """Current caches with a readable manifest (not ``-old``, not temporary)."""
        out: list[CacheEntry] = []
        for name in self.names():
            with contextlib.suppress(StoreError):
                e = self.entry(name)
                if e is not None and e.tarball.is_file():
                    out.append(e)
        return out

    @contextlib.contextmanager
    def open_cache(self, name: str, *, attempts: int = 50) -> Iterator[tuple[Manifest, BinaryIO]]:
        """A matching (manifest, open tarball) pair, even while a commit runs.

        Only the size is checked here; hash the stream while reading it to check the
        sha256 (``verify`` does the full check).
        """
        parse_name(name)
        mpath = self.manifest_path(name)
        problem = f"no cache named {name!r} in {self.dir}"
        for _ in range(attempts):
            first = self._read_or_none(mpath)
            if first is None:
                if self.tarball(name) is None:
                    break
                problem = f"cache {name!r} has a tarball but no manifest {mpath.name}"
            else:
                m = Manifest.loads(first, source=str(mpath))
                try:
                    f = (self.dir / m.tarball).open("rb")
                except FileNotFoundError:
                    problem = f"cache {name!r}: {m.tarball} named by its manifest is missing"
                else:
                    size = os.fstat(f.fileno()).st_size
                    if self._read_or_none(mpath) == first and size == m.size:
                        try:
                            yield m, f
                        finally:
                            f.close()
                        return
                    f.close()
                    problem = (f"cache {name!r}: {m.tarball} is {size} bytes but its "
                               f"manifest says {m.size}")
            time.sleep(0.02)
        raise StoreError(problem, hint=f"run 'vzpkg verify {name}'; rebuild, pull or "
                                       "re-import the cache if it is damaged")

    @staticmethod
    def _read_or_none(path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def next_serial(self, name: str) -> int:
        """One more than the newest serial of the current or ``-old`` cache."""
        serials = [0]
        for old in (False, True):
            with contextlib.suppress(StoreError):
                m = self._load_manifest(self.manifest_path(name, old=old), name)
                if m is not None:
                    serials.append(m.serial)
        return max(serials) + 1

    # --- locking -----------------------------------------------------------
    def lock(self, name: str, *, timeout: float | None = None,
             on_wait: Callable[[str], None] | None = stderr_line) -> ContextManager[None]:
        """Hold the write lock of *name* (re-entrant in one thread).

        Waits for another holder; after a second says so through *on_wait*; gives up
        with StoreError after *timeout* seconds (None: wait for ever).
        """
        parse_name(name)
        return hold(self._lock_path(name), f"cache {name!r}", timeout=timeout,
                    on_wait=on_wait)

    # --- writing -----------------------------------------------------------
    def _temp_name(self, name: str, suffix: str) -> Path:
        return self.dir / f".{name}.{os.urandom(8).hex()}.tmp{suffix}"

    def staging(self, name: str, compression: Compression) -> Path:
        """A fresh temporary path in the cache directory to pack *name* into.

        Hold ``lock(name)`` while the path exists: ``cleanup_stale()`` in another
        process removes staged files of names nobody holds locked.
        """
        parse_name(name)
        self.dir.mkdir(parents=True, exist_ok=True)
        return self._temp_name(name, Compression(compression).suffix)

    def staging_dir(self, name: str) -> Path:
        """A new private (0700) scratch directory in the cache directory."""
        parse_name(name)
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self._temp_name(name, "dir")
        path.mkdir(mode=0o700)
        return path

    def abort(self, staged: Path) -> None:
        """Remove a staged file or directory that will not be committed."""
        if not TEMP_RE.match(staged.name) or staged.parent != self.dir:
            raise StoreError(f"{staged} is not a staging path of {self.dir}")
        if staged.is_dir() and not staged.is_symlink():
            shutil.rmtree(staged, ignore_errors=True)
        else:
            _unlink(staged)

    def commit(self, name: str, staged: Path, manifest: Manifest,
               signature: Path | None = None, *, keep_serial: bool = False) -> CacheEntry:
        """Put *staged* in place as cache *name*, keeping the current one as -old.

        The serial becomes the previous serial + 1 (``keep_serial``: the manifest's,
        e.g. a pulled cache).  *staged* is consumed: on failure it is removed and the
        current cache is left as it was.
        """
        try:
            return self._commit(name, staged, manifest, signature, keep_serial)
        finally:
            if staged.exists() and TEMP_RE.match(staged.name):
                _unlink(staged)

    def _commit(self, name: str, staged: Path, manifest: Manifest,
                signature: Path | None, keep_serial: bool) -> CacheEntry:
        parse_name(name)
        if manifest.name != name:
            raise StoreError(f"manifest is for {manifest.name!r}, not {name!r}")
        comp = Compression(manifest.compression)
        if not staged.is_file():
            raise StoreError(f"staged cache file {staged} is missing",
                             hint="the packing step did not produce the file")
        size = staged.stat().st_size
        if size != manifest.size:
            raise StoreError(f"staged cache file {staged} is {size} bytes, its manifest "
                             f"says {manifest.size}")
        if staged.stat().st_dev != self.dir.stat().st_dev:
            raise StoreError(f"staged cache file {staged} is not on the file system of "
                             f"{self.dir}", hint="pack into a path from staging()")
        if signature is not None and not signature.is_file():
            raise StoreError(f"signature file {signature} is missing")
        tarball = self.dir / tarball_name(name, comp)
        asc = tarball.with_name(tarball.name + SIG_SUFFIX)
        mpath = self.manifest_path(name)
        temps: list[Path] = []
        with self.lock(name):
            try:
                final = replace(
                    manifest, tarball=tarball.name,
                    serial=manifest.serial if keep_serial else self.next_serial(name),
                    signature=asc.name if signature is not None else None)
                Manifest.loads(final.dumps(), source=f"new manifest of {name}")  # validate
                fsync_path(staged)
                sig_tmp = None
                if signature is not None:
                    sig_tmp = self._temp_name(name, SIG_SUFFIX)
                    temps.append(sig_tmp)
                    shutil.copyfile(signature, sig_tmp)
                    fsync_path(sig_tmp)
                m_tmp = self._temp_name(name, MANIFEST_SUFFIX)
                temps.append(m_tmp)
                write_synced(m_tmp, final.dumps().encode())
                self._rotate(name)
                self._swap(staged, tarball, sig_tmp, asc, m_tmp, mpath, name)
            finally:
                for t in temps:
                    _unlink(t)
        return CacheEntry(name, final, tarball, mpath, asc if signature else None)

    def _rotate(self, name: str) -> None:
        """Replace -old by hard links to the current files (current stays visible)."""
        for old in self._files(name, old=True):
            _unlink(old)
        for cur, old in zip(self._files(name), self._files(name, old=True), strict=True):
            with contextlib.suppress(FileNotFoundError):
                os.link(cur, old)
        fsync_path(self.dir)

    def _swap(self, staged: Path, tarball: Path, sig_tmp: Path | None, asc: Path,
              m_tmp: Path, mpath: Path, name: str) -> None:
        # The manifest goes first: from here until the new one is renamed in, a
        # reader finds no manifest and waits, never a manifest with a wrong tarball.
        _unlink(mpath)
        try:
            for t in self._tarballs(name):
                if t != tarball:
                    _unlink(t)
                _unlink(t.with_name(t.name + SIG_SUFFIX))
            os.rename(staged, tarball)
            if sig_tmp is not None:
                os.rename(sig_tmp, asc)
            os.rename(m_tmp, mpath)
        except BaseException:
            self._restore_old(name)
            raise
        fsync_path(self.dir)

    def _restore_old(self, name: str) -> None:
        """After a failed swap: make the current files what they were (= the -old links)."""
        for cur in self._files(name):
            with contextlib.suppress(OSError):
                _unlink(cur)
        # the manifest is the last entry of _files(), so it comes back last
        for cur, old in zip(self._files(name), self._files(name, old=True), strict=True):
            with contextlib.suppress(OSError):
                os.link(old, cur)
        with contextlib.suppress(OSError):
            fsync_path(self.dir)

    def remove(self, name: str) -> None:
        """Remove cache *name* and its -old copy; StoreError if there is none."""
        parse_name(name)
        with self.lock(name):
            removed = False
            # manifest first, so a reader never sees a manifest without its tarball
            for f in [self.manifest_path(name), *self._files(name)[:-1],
                      *self._files(name, old=True)]:
                removed |= _unlink(f)
            if not removed:
                raise StoreError(f"no cache named {name!r} in {self.dir}",
                                 hint="'vzpkg list' shows the built caches")
            fsync_path(self.dir)

    def cleanup_stale(self) -> builtins.list[Path]:
        """Remove temporary files left by killed writers (names nobody holds locked)."""
        removed: builtins.list[Path] = []
        if not self.dir.is_dir():
            return removed
        for p in sorted(self.dir.iterdir()):
            m = TEMP_RE.match(p.name)
            if m is None or held_here(self._lock_path(m.group("name"))):
                continue
            try:
                parse_name(m.group("name"))
            except StoreError:
                continue
            try:
                with self.lock(m.group("name"), timeout=0, on_wait=None):
                    self.abort(p)
                    removed.append(p)
            except StoreError:
                continue      # a live writer holds it
        return removed

    def verify(self, name: str, *, trusted_keys: Sequence[Key] = ()) -> VerifyReport:
        """Check sha256, size, every entry, counts and signature of cache *name*."""
        from vzpkg.store.verify import verify_cache
        return verify_cache(self, name, trusted_keys=trusted_keys)
