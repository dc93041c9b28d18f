"""``vzpkg pull``: fetch caches from signed mirrors, verify every byte, commit.

For each mirror in order: fetch ``index.json`` and its detached signature,
verify it against the pinned trusted keys, then for each wanted cache fetch
its manifest (checked against the sha256 in the signed index) and tarball
signature, download the tarball into ``<cache_dir>/.partial/`` (resuming
what an interrupted pull left there) while its sha256 is computed, its
detached signature is checked by sqv reading along, and it is flushed to disk
behind the writer; only when size, sha256 (against the signed index) and
signature (against the trusted keys) are all right is it handed to the store,
which replaces the cache atomically under its lock.
A failure of any kind moves on to the next mirror; bytes that turned out to be
wrong are deleted, an interrupted download is kept for the next attempt.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, NamedTuple

from vzpkg.core.errors import ConfigError, MirrorError, StoreError
from vzpkg.core.types import Compression
from vzpkg.mirror.config import MirrorConfig
from vzpkg.mirror.fetch import Fetcher, FetchError, NoProgress, Progress
from vzpkg.mirror.index import INDEX_NAME, INDEX_SIG_NAME, Index, IndexEntry
from vzpkg.mirror.verify import Check, HashCheck, Verifier
from vzpkg.store.cachestore import CacheStore
from vzpkg.store.manifest import Manifest, expand_name

if TYPE_CHECKING:
    from vzpkg.mirror.pgpsig import Signer

PARTIAL_DIR = ".partial"


class Pulled(NamedTuple):
    """One cache a pull made current."""

    name: str
    serial: int
    sha256: str
    size: int
    status: str          # "pulled" | "current"
    mirror: str
    fetched: int         # tarball bytes downloaded by this pull
    resumed_from: int    # bytes of an earlier attempt that were kept


class PullReport(NamedTuple):
    """What a pull did: the caches pulled or current, and why the others failed."""

    pulled: tuple[Pulled, ...]
    failed: tuple[tuple[str, str], ...]   # (cache name or "*", why)

    @property
    def ok(self) -> bool:
        return not self.failed


class Puller:
    """One pull session: a verifier of the pinned keys and an HTTP session."""

    def __init__(self, store: CacheStore, config: MirrorConfig,
                 progress: Progress | None = None, *, use_sqv: bool | None = None) -> None:
        if not config.mirrors:
            raise ConfigError("no mirror to pull from",
                              hint="pass --mirror URL, or list URLs under pull.mirrors in "
                                   "vzpkg.yaml or TEMPLATE_MIRRORS in vz.conf")
        if not config.trusted_keys:
            raise ConfigError("no trusted keys configured: a pull verifies every index and "
                              "tarball signature and refuses unsigned mirrors",
                              hint="add pull.trusted_keys: [{file: KEY.asc, fingerprint: "
                                   "40 HEX}] to vzpkg.yaml or TEMPLATE_KEYS to vz.conf")
        self.store = store
        self.config = config
        self.progress: Progress = progress or NoProgress()
        keys = [(self._read_key(k.file), k.fingerprint, str(k.file))
                for k in config.trusted_keys]
        self.verifier = Verifier(keys, use_sqv=use_sqv)
        self.trusted = self.verifier.trusted
        self.signers: dict[str, Signer | None] = {}     # mirror -> its index's signer
        try:
            self.fetcher = Fetcher(config.connect_timeout, config.read_timeout)
        except BaseException:
            self.verifier.close()
            raise

    def __enter__(self) -> Puller:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.fetcher.close()
        self.verifier.close()

    @staticmethod
    def _read_key(file: Path) -> str:
        try:
            return file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"trusted key {file}: cannot read: {exc}",
                              hint="fix the file path in pull.trusted_keys / "
                                   "TEMPLATE_KEYS") from None

    # -- the index ---------------------------------------------------------------------
    def index(self, mirror: str) -> Index:
        """The mirror's index, its signature verified; MirrorError otherwise."""
        url = mirror + INDEX_NAME
        for attempt in (1, 2):
            data = self.fetcher.get_bytes(url)
            try:
                sig = self.fetcher.get_bytes(mirror + INDEX_SIG_NAME)
            except FetchError as exc:
                raise MirrorError(f"{url}: the index is not signed ({exc.message})",
                                  hint="pull only from mirrors made by 'vzpkg publish "
                                       "--sign'; nothing was downloaded") from None
            try:
                primary = self.verifier.bytes(sig, data, what=url)
                self.signers[mirror] = self.verifier.signer(sig, primary)
                break
            except MirrorError as exc:
                # publish replaces the signature just before the index: a reader can
                # catch the two out of step once; a second read settles it
                if attempt == 2:
                    raise MirrorError(f"{exc.message}; the index was refused",
                                      hint=exc.hint) from None
        return Index.from_bytes(data, source=url)

    # -- one cache ---------------------------------------------------------------------
    def _current(self, e: IndexEntry) -> Manifest | None:
        m = self.store.manifest(e.name)
        if m is not None and m.sha256 == e.sha256 and self.store.tarball(e.name) is not None:
            return m
        return None

    def _manifest(self, mirror: str, e: IndexEntry) -> Manifest:
        url = mirror + e.manifest
        data = self.fetcher.get_bytes(url)
        if hashlib.sha256(data).hexdigest() != e.manifest_sha256:
            raise MirrorError(f"{url}: sha256 differs from the signed index; refused")
        try:
            m = Manifest.loads(data, source=url)
        except StoreError as exc:
            raise MirrorError(exc.message, hint=exc.hint) from None
        for field, got, want in (("name", m.name, e.name), ("sha256", m.sha256, e.sha256),
                                 ("size", m.size, e.size),
                                 ("compression", m.compression, e.compression)):
            if got != want:
                raise MirrorError(f"{url}: field {field!r} is {got!r}, the signed index "
                                  f"says {want!r}; refused")
        return m

    def _download(self, mirror: str, e: IndexEntry, part: Path,
                  check: Check | HashCheck) -> tuple[int, int, hashlib._Hash]:
        """Fetch the tarball into *part*, feeding *check*; (bytes fetched, kept, the
        sha256 state of the file)."""
        url = mirror + e.tarball
        before = part.stat().st_size if part.exists() else 0
        resumed = before if before <= e.size else 0
        fetched = 0
        for attempt in range(self.config.retries + 1):
            try:
                d = self.fetcher.download(url, part, e.size, self.progress, e.name,
                                          check)
            except FetchError as exc:
                fetched += exc.fetched
                if exc.corrupt:
                    part.unlink(missing_ok=True)
                    raise
                if not exc.partial or attempt == self.config.retries:
                    raise
                self.progress.note(f"{exc.message}; resuming")
                continue
            fetched += d.fetched
            if d.sha256 != e.sha256 and d.resumed_from and attempt < self.config.retries:
                # the bytes kept from an earlier attempt may be what is wrong: start over
                self.progress.note(f"{e.name}: sha256 mismatch after resuming; "
                                   "downloading again from the start")
                part.unlink(missing_ok=True)
                continue
            if d.sha256 != e.sha256:
                part.unlink(missing_ok=True)
                raise MirrorError(f"{url}: sha256 {d.sha256} differs from the signed index "
                                  f"({e.sha256}); the download was deleted",
                                  hint="the mirror's file was altered or damaged")
            return fetched, resumed, d.state
        raise AssertionError("unreachable")

    def pull_one(self, mirror: str, e: IndexEntry) -> Pulled:
        if self._current(e) is not None:
            return Pulled(e.name, e.serial, e.sha256, e.size, "current", mirror, 0, 0)
        # the cache's lock covers the download too: two pulls never write one .part file
        with self.store.lock(e.name, on_wait=self.progress.note):
            if self._current(e) is not None:       # another pull got there first
                return Pulled(e.name, e.serial, e.sha256, e.size, "current", mirror, 0, 0)
            return self._fetch_and_commit(mirror, e)

    def _fetch_and_commit(self, mirror: str, e: IndexEntry) -> Pulled:
        manifest = self._manifest(mirror, e)
        sig = self.fetcher.get_bytes(mirror + e.signature, limit=1 << 20)
        partial = self.store.dir / PARTIAL_DIR
        partial.mkdir(parents=True, exist_ok=True)
        part = partial / f"{e.name}.{e.sha256[:16]}.part"
        for stale in partial.glob(f"{e.name}.*.part"):
            if stale != part:
                stale.unlink(missing_ok=True)
        # the tarball's signature is checked from the download's own sha256 where the
        # key that signed the index made it (vzpkg.mirror.pgpsig), else while it
        # downloads (sqv reads along)
        check = self.verifier.stream(sig, what=mirror + e.signature,
                                     signer=self.signers.get(mirror))
        try:
            fetched, resumed, state = self._download(mirror, e, part, check)
            try:
                check.result(part, state)
            except MirrorError as exc:
                part.unlink(missing_ok=True)
                raise MirrorError(f"{exc.message}; the download was deleted",
                                  hint=exc.hint) from None
        finally:
            check.close()
        sig_file = partial / f"{e.name}.{e.sha256[:16]}.asc"
        try:
            sig_file.write_bytes(sig)
            self._commit(e, manifest, part, sig_file)   # the store fsyncs it, once
        finally:
            sig_file.unlink(missing_ok=True)
        return Pulled(e.name, e.serial, e.sha256, e.size, "pulled", mirror, fetched, resumed)

    def _commit(self, e: IndexEntry, manifest: Manifest, part: Path, sig: Path) -> None:
        """Hand the verified download to the store (the caller holds the lock)."""
        staged = self.store.staging(e.name, Compression(manifest.compression))
        try:
            os.replace(part, staged)
            self.store.commit(e.name, staged, manifest, sig, keep_serial=True)
        finally:
            staged.unlink(missing_ok=True)

    # -- several caches, several mirrors -------------------------------------------------
    def pull(self, names: Sequence[str], *, everything: bool = False) -> PullReport:
        """Pull *names* (short forms allowed), or every cache the mirror lists."""
        wanted = list(dict.fromkeys(expand_name(n) for n in names))
        done: list[Pulled] = []
        why: dict[str, list[str]] = {}
        index_errors: list[str] = []
        for mirror in self.config.mirrors:
            try:
                index = self.index(mirror)
            except MirrorError as exc:
                index_errors.append(str(exc))
                self.progress.note(f"{exc.message}; trying the next mirror")
                continue
            if everything:
                wanted = list(dict.fromkeys([*wanted, *index.names()]))
                everything = False
            left = []
            for name in wanted:
                e = index.get(name)
                if e is None:
                    why.setdefault(name, []).append(f"{mirror}: not in the index")
                    left.append(name)
                    continue
                try:
                    done.append(self.pull_one(mirror, e))
                except MirrorError as exc:
                    why.setdefault(name, []).append(str(exc))
                    self.progress.note(f"{name}: {exc.message}")
                    left.append(name)
            wanted = left
            if not wanted:
                break
        failed = [(n, "\n  ".join(why.get(n, []) + index_errors)) for n in wanted]
        if everything and index_errors:
            failed.append(("*", "\n  ".join(index_errors)))
        return PullReport(tuple(done), tuple(failed))
