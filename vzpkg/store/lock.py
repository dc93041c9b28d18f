"""Per-cache-name write locks for the cache store, and small fsync helpers.

A lock is an ``fcntl.flock`` on ``<cache_dir>/.locks/<name>.lock``; the holder
writes its pid into the file so a waiting process can say who it waits for.
Locks are re-entrant within one thread of one process (a builder that holds the
lock may call ``commit``, which takes it again).  The kernel drops a lock when
its holder dies, so a killed writer never leaves a cache locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from vzpkg.core.errors import StoreError

LOCK_MESSAGE_AFTER = 1.0

# (lock file, thread id) -> depth
_HELD: dict[tuple[str, int], int] = {}
_HELD_GUARD = threading.Lock()


def stderr_line(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def hold(path: Path, what: str, *, timeout: float | None = None,
         on_wait: Callable[[str], None] | None = stderr_line) -> Iterator[None]:
    """Hold the lock file *path* (naming it *what* in messages)."""
    key = (str(path), threading.get_ident())
    with _HELD_GUARD:
        depth = _HELD.get(key, 0)
        if depth:
            _HELD[key] = depth + 1
    if depth:
        try:
            yield
        finally:
            with _HELD_GUARD:
                _HELD[key] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        _acquire(fd, path, what, timeout, on_wait)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        with _HELD_GUARD:
            _HELD[key] = 1
        try:
            yield
        finally:
            with _HELD_GUARD:
                del _HELD[key]
    finally:
        os.close(fd)          # releases the lock


def _acquire(fd: int, path: Path, what: str, timeout: float | None,
             on_wait: Callable[[str], None] | None) -> None:
    start = time.monotonic()
    told = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        waited = time.monotonic() - start
        try:
            holder = path.read_text(errors="replace").strip() or "unknown"
        except OSError:
            holder = "unknown"
        if timeout is not None and waited >= timeout:
            raise StoreError(f"{what} is locked by another vzpkg process (pid {holder})",
                             hint="wait for that build, import or pull to finish and "
                                  "try again")
        if not told and waited >= LOCK_MESSAGE_AFTER and on_wait is not None:
            on_wait(f"waiting for the lock on {what} (held by pid {holder})")
            told = True
        time.sleep(0.05)


def held_here(path: Path) -> bool:
    """Whether some thread of this process holds the lock file *path*."""
    with _HELD_GUARD:
        return any(p == str(path) and d > 0 for (p, _), d in _HELD.items())




def write_synced(path: Path, data: bytes) -> None:
    """Create *path* (which must not exist) with *data*, fsynced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


