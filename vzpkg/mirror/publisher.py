"""``vzpkg publish``: write caches into a signed static tree.

Order of writes, so a reader never sees an index naming a missing file: for
each new cache, its tarball, manifest and signature go into
``caches/<name>/<serial>/`` (each written to a temporary name, fsynced and
renamed); then the index signature and finally ``index.json`` itself are
replaced by rename.  ``--keep N`` prunes after that, and never the serial the
index names.  A cache whose sha256 is already in the index is not
written again; when nothing changed, not even the index is touched.  Publishers
into one tree take turns (a flock on its directory), so concurrent jobs lose no
entry and none prunes what another's index names.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from vzpkg.core.errors import GpgError, MirrorError, StoreError
from vzpkg.core.files import fsync_path
from vzpkg.core.gpg import Keyring
from vzpkg.mirror.index import INDEX_NAME, INDEX_SIG_NAME, Index, IndexEntry
from vzpkg.store.cachestore import CacheStore
from vzpkg.store.manifest import Manifest

if TYPE_CHECKING:
    from vzpkg.mirror.streams import StreamItem

CHUNK = 1 << 20


@dataclass(frozen=True)
class Published:
    name: str
    serial: int
    sha256: str
    size: int
    status: str          # "published" | "unchanged"
    tarball: str


@dataclass(frozen=True)
class PublishReport:
    dest: Path
    caches: tuple[Published, ...]
    index_written: bool
    pruned: tuple[str, ...]


@contextmanager
def _atomic(dest: Path) -> Iterator[Path]:
    """A temporary sibling of *dest* that replaces it on success, vanishes otherwise."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    path = Path(tmp)
    try:
        yield path
        with path.open("rb+") as f:
            os.fsync(f.fileno())
        path.chmod(0o644)
        os.replace(path, dest)
    finally:
        path.unlink(missing_ok=True)




def _copy_hashed(src: Path, dst: Path, also: hashlib._Hash | None = None) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with src.open("rb") as fi, dst.open("wb") as fo:
        while chunk := fi.read(CHUNK):
            h.update(chunk)
            if also is not None:
                also.update(chunk)
            fo.write(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sign(keyring: Keyring, keyid: str, data: Path, dest: Path) -> None:
    try:
        keyring.sign_detached(data, keyid, dest)
    except GpgError as exc:
        raise MirrorError(f"cannot sign {data.name} with key {keyid}: {exc.message}",
                          hint="check --sign / signing.key and that the secret key is in "
                               "--gnupghome / signing.gnupghome (or $GNUPGHOME)") from None


def check_secret_key(keyring: Keyring, keyid: str) -> str:
    """The fingerprint of the secret key *keyid*; MirrorError when it is not there."""
    want = keyid.replace(" ", "").upper()
    for k in keyring.gpg.list_keys(secret=True):
        fpr = str(k.get("fingerprint", "")).upper()
        uids = [str(u) for u in k.get("uids", [])]
        if want and (fpr.endswith(want) or any(keyid in u for u in uids)):
            return fpr
    raise MirrorError(f"no secret key {keyid!r} in the keyring {keyring.home}",
                      hint="pass --gnupghome DIR (or set signing.gnupghome) to the keyring "
                           "that holds the signing key; list them with "
                           "'gpg --list-secret-keys'")


def read_index(dest: Path) -> Index:
    path = dest / INDEX_NAME
    if not path.exists():
        return Index(())
    return Index.from_bytes(path.read_bytes(), source=str(path))


def _publish_one(m: Manifest, src: Path, dest: Path, keyring: Keyring,
                 keyid: str) -> tuple[IndexEntry, StreamItem]:
    from vzpkg.mirror.streams import item_for
    from vzpkg.store.export.lxc import incus_metadata_tarball
    rel = f"caches/{m.name}/{m.serial}"
    d = dest / rel
    d.mkdir(parents=True, exist_ok=True)
    tar = d / m.tarball
    meta = incus_metadata_tarball(m)
    combined = hashlib.sha256(meta)
    with _atomic(tar) as tmp:
        sha, size = _copy_hashed(src, tmp, combined)
        if sha != m.sha256 or size != m.size:
            raise MirrorError(f"cache {m.name}: {src} does not match its manifest "
                              f"(sha256 {sha[:16]}…, {size} bytes; manifest says "
                              f"{m.sha256[:16]}…, {m.size} bytes); not published",
                              hint=f"run 'vzpkg verify {m.name}'; rebuild or re-import it")
        with _atomic(d / (m.tarball + ".asc")) as sig:
            _sign(keyring, keyid, tmp, sig)
    manifest_bytes = m.dumps().encode()
    with _atomic(d / f"{m.name}.manifest.json") as tmp:
        tmp.write_bytes(manifest_bytes)
    with _atomic(d / f"{m.name}.incus.tar.xz") as tmp:
        tmp.write_bytes(meta)
    fsync_path(d)
    e = IndexEntry(
        name=m.name, distribution=m.distribution, release=m.release, arch=m.arch,
        set_name=m.set_name, serial=m.serial, size=m.size, sha256=m.sha256,
        compression=m.compression, tarball=f"{rel}/{m.tarball}",
        manifest=f"{rel}/{m.name}.manifest.json",
        manifest_sha256=hashlib.sha256(manifest_bytes).hexdigest(),
        signature=f"{rel}/{m.tarball}.asc", packages=len(m.packages), created=m.created)
    return e, item_for(e, meta, combined.hexdigest())


def _stream_items(dest: Path, index: Index, new: dict[str, StreamItem]
                  ) -> dict[str, StreamItem]:
    """An item for every entry: new, reused from the tree's images.json, or made
    from the files in the tree (a tree published before streams existed)."""
    from vzpkg.mirror.streams import STREAMS_IMAGES, combined_sha256, item_for, read_items
    from vzpkg.store.export.lxc import incus_metadata_tarball
    images = dest / STREAMS_IMAGES
    old = read_items(images.read_bytes() if images.is_file() else None)
    items: dict[str, StreamItem] = {}
    for e in index.entries:
        it = new.get(e.name) or old.get(e.name)
        if it is None or it.sha256 != e.sha256 or not (dest / it.meta_path).is_file():
            m = Manifest.loads((dest / e.manifest).read_bytes(), source=str(e.manifest))
            meta = incus_metadata_tarball(m)
            it = item_for(e, meta, combined_sha256(meta, dest / e.tarball))
            with _atomic(dest / it.meta_path) as tmp:
                tmp.write_bytes(meta)
        items[e.name] = it
    return items


def _write_streams(dest: Path, index: Index, items: dict[str, StreamItem],
                   keyring: Keyring, keyid: str) -> None:
    from vzpkg.mirror.streams import render
    for rel, data in render(index, items).items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with _atomic(path) as tmp:
            tmp.write_bytes(data)
            with _atomic(path.with_name(path.name + ".asc")) as sig:
                _sign(keyring, keyid, tmp, sig)
        fsync_path(path.parent)


def _in_place(dest: Path, e: IndexEntry) -> bool:
    tar = dest / e.tarball
    return (tar.is_file() and tar.stat().st_size == e.size and (dest / e.manifest).is_file()
            and (dest / e.signature).is_file())


def _prune(dest: Path, index: Index, keep: int) -> list[str]:
    removed: list[str] = []
    top = dest / "caches"
    if not top.is_dir():
        return removed
    for named in sorted(top.iterdir()):
        entry = index.get(named.name)
        serials = sorted((int(p.name) for p in named.iterdir() if p.name.isdigit()),
                         reverse=True)
        keepers = set(serials[:keep])
        if entry is not None:
            keepers.add(entry.serial)
        for s in serials:
            if s not in keepers:
                shutil.rmtree(named / str(s))
                removed.append(f"caches/{named.name}/{s}")
    return removed


def refuse_older(cur: IndexEntry | None, m: Manifest, there: str, fresh: str) -> None:
    """Refuse to publish *m* over a serial at least as new with other content (*there*
    is where the index lives, *fresh* what a new one would be)."""
    if cur is not None and cur.serial >= m.serial and cur.sha256 != m.sha256:
        raise MirrorError(
            f"cache {m.name}: {there} already has serial {cur.serial} with different "
            f"content; the local cache is serial {m.serial}",
            hint="clients take the newest serial: rebuild so the serial grows past the "
                 f"published one, or publish into a fresh {fresh}")


def _from_store(store: CacheStore, names: Sequence[str]) -> list[tuple[Manifest, Path]]:
    out: list[tuple[Manifest, Path]] = []
    for name in names or [e.name for e in store.list()]:
        m = store.manifest(name)
        if m is None:
            raise MirrorError(f"no cache named {name} in {store.dir}",
                              hint="see 'vzpkg list' for the caches there")
        src = store.tarball(m.name)
        if src is None:
            raise MirrorError(f"cache {m.name}: the manifest has no tarball beside it",
                              hint=f"run 'vzpkg verify {m.name}' and rebuild or re-import it")
        out.append((m, src))
    return out


def _from_tree(tree: Path) -> list[tuple[Manifest, Path]]:
    """The caches a published tree's index names (each manifest checked against it)."""
    index = read_index(tree)
    out: list[tuple[Manifest, Path]] = []
    for e in index.entries:
        path = tree / e.manifest
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise MirrorError(f"{tree}: {e.manifest} named by its index.json cannot be "
                              f"read: {exc.strerror}",
                              hint="the tree is incomplete; publish it again") from None
        if hashlib.sha256(data).hexdigest() != e.manifest_sha256:
            raise MirrorError(f"{path}: sha256 differs from {tree / INDEX_NAME}",
                              hint="the tree was altered; publish it again")
        try:
            m = Manifest.loads(data, source=str(path))
        except StoreError as exc:
            raise MirrorError(exc.message, hint=exc.hint) from None
        out.append((m, tree / e.tarball))
    return out


def merge_sources(dirs: Sequence[Path], names: Sequence[str] = ()
                  ) -> list[tuple[Manifest, Path]]:
    """The caches in several job outputs (cache directories or published trees).

    The newest serial of each name wins; one serial with two different contents
    is refused (two jobs built the same cell differently).
    """
    best: dict[str, tuple[Manifest, Path, Path]] = {}
    for d in dirs:
        if not d.is_dir():
            raise MirrorError(f"--merge {d}: not a directory",
                              hint="pass the cache directories (or published trees) the "
                                   "build jobs produced")
        found = _from_tree(d) if (d / INDEX_NAME).is_file() else _from_store(CacheStore(d), ())
        if not found:
            raise MirrorError(f"--merge {d}: no caches in it",
                              hint="is it the cache directory the build job wrote "
                                   "(vzpkg --cache-dir DIR build ...)?")
        for m, src in found:
            cur = best.get(m.name)
            if cur is not None and cur[0].serial == m.serial and cur[0].sha256 != m.sha256:
                raise MirrorError(f"cache {m.name} serial {m.serial} differs between "
                                  f"{cur[2]} and {d}; nothing was published",
                                  hint="build each cache in one job only")
            if cur is None or m.serial > cur[0].serial:
                best[m.name] = (m, src, d)
    missing = [n for n in names if n not in best]
    if missing:
        raise MirrorError(f"no cache named {', '.join(missing)} in "
                          f"{', '.join(str(d) for d in dirs)}")
    return [(m, src) for n, (m, src, _) in sorted(best.items()) if not names or n in names]


def publish(store: CacheStore, dest: Path, names: Sequence[str], *, keyring: Keyring,
            keyid: str, keep: int | None = None, merge: Sequence[Path] = ()
            ) -> PublishReport:
    """Publish *names* (all caches when empty) from *store* into the tree at *dest*;
    with *merge*, from those directories (the output of separate build jobs) instead."""
    if keep is not None and keep < 1:
        raise MirrorError(f"--keep {keep}: must keep at least the current serial (1)")
    if dest.exists() and not dest.is_dir():
        raise MirrorError(f"{dest} is not a directory",
                          hint="publish into a directory a web server serves")
    check_secret_key(keyring, keyid)
    sources = merge_sources(merge, names) if merge else _from_store(store, names)
    if not sources:
        raise MirrorError(f"no caches to publish in {store.dir}",
                          hint="build or import a cache first")
    dest.mkdir(parents=True, exist_ok=True)
    with _publisher_lock(dest):
        return _publish_locked(dest, sources, keyring, keyid, keep)


@contextmanager
def _publisher_lock(dest: Path) -> Iterator[None]:
    """One publisher at a time in a tree: the next one reads the index the last one
    wrote (no entry lost) and no --keep prunes a serial another's index names.  The
    lock is a flock on the directory itself: no file is added to the tree."""
    import fcntl
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"vzpkg: waiting for another publisher of {dest}", file=sys.stderr,
                  flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _publish_locked(dest: Path, sources: list[tuple[Manifest, Path]], keyring: Keyring,
                    keyid: str, keep: int | None) -> PublishReport:
    old = read_index(dest)
    new: dict[str, IndexEntry] = {}
    new_items: dict[str, StreamItem] = {}
    done: list[Published] = []
    for m, src in sources:
        cur = old.get(m.name)
        if cur is not None and cur.sha256 == m.sha256 and _in_place(dest, cur):
            done.append(Published(m.name, m.serial, m.sha256, m.size, "unchanged",
                                  cur.tarball))
            continue
        refuse_older(cur, m, "the mirror", "tree")
        e, new_items[m.name] = _publish_one(m, src, dest, keyring, keyid)
        new[m.name] = e
        done.append(Published(m.name, m.serial, m.sha256, m.size, "published", e.tarball))
    from vzpkg.mirror.streams import STREAMS_INDEX
    written = bool(new) or not (dest / INDEX_NAME).exists() \
        or not (dest / INDEX_SIG_NAME).exists() or not (dest / STREAMS_INDEX).exists()
    index = old.with_entries(new, _now() if written else old.generated)
    if written:
        # the simplestreams files name only files already there; index.json comes last
        _write_streams(dest, index, _stream_items(dest, index, new_items), keyring, keyid)
        data = index.to_bytes()
        with _atomic(dest / INDEX_NAME) as idx:
            idx.write_bytes(data)
            with _atomic(dest / INDEX_SIG_NAME) as sig:
                _sign(keyring, keyid, idx, sig)
        fsync_path(dest)
    pruned = _prune(dest, index, keep) if keep is not None else []
    return PublishReport(dest, tuple(done), written, tuple(pruned))
