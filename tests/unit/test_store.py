"""The cache store: atomic replace with -old, serials, locking, consistent reads."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.store_helpers import NAME, commit_bytes, make_manifest, stage_bytes
from vzpkg.core.errors import StoreError
from vzpkg.core.types import Compression
from vzpkg.store.cachestore import CacheStore

ROOT = Path(__file__).resolve().parents[2]


def files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name != ".locks")


def test_commit_keeps_old_and_increments_serial(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "caches")
    assert store.next_serial(NAME) == 1
    m1 = commit_bytes(store, b"first")
    assert m1.serial == 1
    assert files(store.dir) == [f"{NAME}.manifest.json", f"{NAME}.tar.zst"]
    m2 = commit_bytes(store, b"second")
    assert m2.serial == 2
    assert (store.dir / f"{NAME}.tar.zst").read_bytes() == b"second"
    assert (store.dir / f"{NAME}-old.tar.zst").read_bytes() == b"first"
    assert store.manifest(NAME) == m2
    old = store.old_manifest(NAME)
    assert old is not None and old.serial == 1 and old.sha256 == m1.sha256
    m3 = commit_bytes(store, b"third")
    assert m3.serial == 3
    assert (store.dir / f"{NAME}-old.tar.zst").read_bytes() == b"second"
    assert files(store.dir) == sorted([f"{NAME}.manifest.json", f"{NAME}.tar.zst",
                                       f"{NAME}-old.manifest.json", f"{NAME}-old.tar.zst"])
    assert [e.name for e in store.list()] == [NAME]
    assert store.tarball(NAME) == store.dir / f"{NAME}.tar.zst"


def test_commit_with_signature_and_compression_change(tmp_path: Path) -> None:
    store = CacheStore(tmp_path)
    sig = tmp_path / "sig.asc"
    sig.write_text("not really a signature")
    staged, m = stage_bytes(store, b"zst data")
    e = store.commit(NAME, staged, m, sig)
    assert e.signature == store.dir / f"{NAME}.tar.zst.asc"
    assert e.manifest.signature == f"{NAME}.tar.zst.asc"
    staged, m = stage_bytes(store, b"xz data", compression=Compression.XZ)
    e = store.commit(NAME, staged, m)
    assert e.tarball.name == f"{NAME}.tar.xz" and e.signature is None
    names = files(store.dir)
    # the zst cache and its signature moved to -old; no stale current signature remains
    assert f"{NAME}-old.tar.zst" in names and f"{NAME}-old.tar.zst.asc" in names
    assert f"{NAME}.tar.zst" not in names and f"{NAME}.tar.zst.asc" not in names
    assert store.tarball(NAME) == e.tarball


def test_failed_commit_leaves_current_cache(tmp_path: Path) -> None:
    store = CacheStore(tmp_path)
    m1 = commit_bytes(store, b"good")
    before = {n: (store.dir / n).read_bytes() for n in files(store.dir)}
    # staged file missing
    staged, m = stage_bytes(store, b"new")
    staged.unlink()
    with pytest.raises(StoreError, match="missing"):
        store.commit(NAME, staged, m)
    # size does not match the manifest
    staged, m = stage_bytes(store, b"new")
    staged.write_bytes(b"different length")
    with pytest.raises(StoreError, match="bytes"):
        store.commit(NAME, staged, m)
    # manifest for another cache
    staged, _ = stage_bytes(store, b"new")
    with pytest.raises(StoreError, match="not"):
        store.commit(NAME, staged, make_manifest("other-1-x86_64-minimal", data=b"new"))
    after = {n: (store.dir / n).read_bytes() for n in files(store.dir)}
    assert after == before
    assert store.manifest(NAME) == m1


def test_failed_swap_restores_previous_pair(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    store = CacheStore(tmp_path)
    m1 = commit_bytes(store, b"good")
    staged, m = stage_bytes(store, b"new one")
    real_rename = os.rename

    def failing_rename(src: object, dst: object) -> None:
        if str(dst).endswith(".manifest.json"):
            raise OSError(28, "No space left on device")
        real_rename(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(OSError):
        store.commit(NAME, staged, m)
    monkeypatch.undo()
    assert store.manifest(NAME) == m1
    assert (store.dir / f"{NAME}.tar.zst").read_bytes() == b"good"
    assert files(store.dir) == sorted([f"{NAME}.manifest.json", f"{NAME}.tar.zst",
                                       f"{NAME}-old.manifest.json", f"{NAME}-old.tar.zst"])


def test_remove(tmp_path: Path) -> None:
    store = CacheStore(tmp_path)
    commit_bytes(store, b"1")
    commit_bytes(store, b"2")
    store.remove(NAME)
    assert files(store.dir) == []
    with pytest.raises(StoreError, match="no cache named"):
        store.remove(NAME)
    with pytest.raises(StoreError, match="not a valid cache name"):
        store.remove("../etc")


def test_cleanup_stale_spares_locked_names(tmp_path: Path) -> None:
    store = CacheStore(tmp_path)
    other = "other-1-x86_64-minimal"
    dead = store.staging(NAME, Compression.ZSTD)
    dead.write_bytes(b"partial")
    dead_dir = store.staging_dir(NAME)
    (dead_dir / "etc").mkdir()
    live = store.staging(other, Compression.ZSTD)
    live.write_bytes(b"partial")
    holder = _hold_lock_in_child(store, other)
    try:
        removed = store.cleanup_stale()
    finally:
        holder.kill()
        holder.wait()
    assert sorted(removed) == sorted([dead, dead_dir])
    assert live.exists() and not dead.exists() and not dead_dir.exists()


def _hold_lock_in_child(store: CacheStore, name: str) -> subprocess.Popen[str]:
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from vzpkg.store.cachestore import CacheStore
        with CacheStore(Path({str(store.dir)!r})).lock({name!r}):
            print("locked", flush=True)
            time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         cwd=ROOT)
    assert p.stdout is not None and p.stdout.readline().strip() == "locked"
    return p


def test_lock_timeout_and_wait_message(tmp_path: Path) -> None:
    store = CacheStore(tmp_path)
    holder = _hold_lock_in_child(store, NAME)
    try:
        with pytest.raises(StoreError, match=rf"pid {holder.pid}"), \
                store.lock(NAME, timeout=0.1):
            pass
        said: list[str] = []
        with pytest.raises(StoreError), store.lock(NAME, timeout=1.3, on_wait=said.append):
            pass
        assert said == [f"waiting for the lock on cache {NAME!r} (held by pid {holder.pid})"]
    finally:
        holder.kill()
        holder.wait()
    with store.lock(NAME, timeout=5), store.lock(NAME):   # free again; re-entrant
        pass


WRITER = """
import sys, time
from pathlib import Path
from tests.store_helpers import stage_bytes
from vzpkg.store.cachestore import CacheStore
store = CacheStore(Path(sys.argv[1]))
log = Path(sys.argv[2])
for i in range(int(sys.argv[4])):
    with store.lock(sys.argv[3]):
        with log.open("a") as f:
            f.write(f"start {sys.argv[5]}\\n")
        data = f"{sys.argv[5]}-{i}-".encode() * (1000 + i)
        staged, m = stage_bytes(store, data)
        time.sleep(0.01)
        store.commit(sys.argv[3], staged, m)
        with log.open("a") as f:
            f.write(f"end {sys.argv[5]}\\n")
"""


def _writer(store: CacheStore, log: Path, n: int, tag: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(store.dir), str(log), NAME,
                             str(n), tag], cwd=ROOT)


def test_two_writers_never_interleave(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "c")
    log = tmp_path / "log"
    procs = [_writer(store, log, 8, "A"), _writer(store, log, 8, "B")]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    lines = log.read_text().splitlines()
    assert len(lines) == 32
    for start, end in zip(lines[::2], lines[1::2], strict=True):
        assert start.startswith("start ") and end == "end " + start.split()[1]
    assert store.manifest(NAME) is not None
    assert store.manifest(NAME).serial == 16  # type: ignore[union-attr]


def test_reader_sees_matching_pairs_during_commits(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "c")
    commit_bytes(store, b"initial")
    writer = _writer(store, tmp_path / "log", 40, "W")
    reads = 0
    serials: set[int] = set()
    try:
        while writer.poll() is None or reads == 0:
            with store.open_cache(NAME) as (m, f):
                data = f.read()
            assert hashlib.sha256(data).hexdigest() == m.sha256
            serials.add(m.serial)
            reads += 1
    finally:
        writer.wait(timeout=60)
    assert writer.returncode == 0
    assert reads > 10 and len(serials) > 2


def test_open_cache_reports_missing(tmp_path: Path) -> None:
    store = CacheStore(tmp_path)
    with pytest.raises(StoreError, match="no cache named"), store.open_cache(NAME):
        pass
    commit_bytes(store, b"x")
    (store.dir / f"{NAME}.manifest.json").unlink()
    t0 = time.monotonic()
    with pytest.raises(StoreError, match="no manifest"), store.open_cache(NAME, attempts=3):
        pass
    assert time.monotonic() - t0 < 5


def test_lock_excludes_other_threads(tmp_path: Path) -> None:
    import threading
    store = CacheStore(tmp_path)
    events: list[str] = []
    entered = threading.Event()

    def other() -> None:
        with store.lock(NAME):
            events.append("other")

    with store.lock(NAME):
        t = threading.Thread(target=other)
        t.start()
        entered.wait(0.3)
        events.append("main")
    t.join(5)
    assert events == ["main", "other"]


def test_list_names_and_damaged_manifest(tmp_path: Path) -> None:
    store = CacheStore(tmp_path)
    other = "other-2-aarch64-default"
    commit_bytes(store, b"1")
    commit_bytes(store, b"2")
    commit_bytes(store, b"x", name=other)
    store.staging(NAME, Compression.ZSTD).write_bytes(b"staged")
    assert store.names() == [other, NAME]
    assert [e.name for e in store.list()] == [other, NAME]
    store.manifest_path(other).write_text("{broken")
    assert [e.name for e in store.list()] == [NAME]       # damaged ones are not listed
    assert store.names() == [other, NAME]                 # but verify still finds them
    with pytest.raises(StoreError, match=r"other-2-aarch64-default\.manifest\.json: not valid"):
        store.manifest(other)
    assert store.tarball(other) == store.dir / f"{other}.tar.zst"


def test_own_staging_survives_cleanup_while_locked(tmp_path: Path) -> None:
    store = CacheStore(tmp_path)
    with store.lock(NAME):
        staged = store.staging(NAME, Compression.ZSTD)
        staged.write_bytes(b"in progress")
        assert store.cleanup_stale() == []
        assert staged.exists()
    assert store.cleanup_stale() == [staged]
