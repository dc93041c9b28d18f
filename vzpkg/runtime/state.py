"""Is a VE running?  Its init's host pid, kept so that a stale file is harmless.

``VZ_ROOT/run/CTID.pid`` holds ``PID STARTTIME`` (the start time from
/proc/PID/stat).  A VE is running when that pid exists, is not a zombie and
still has that start time, so a reused pid or a file left by a crash never
makes a stopped VE look alive.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import time
from collections.abc import Iterator
from pathlib import Path


def proc_start_time(pid: int) -> tuple[str, int] | None:
    """(state, starttime) of *pid*, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    rest = raw[raw.rindex(b")") + 2:].split()
    return rest[0].decode(), int(rest[19])


def write_pidfile(path: Path, pid: int) -> None:
    info = proc_start_time(pid)
    start = info[1] if info else 0
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{pid} {start}\n")
    os.replace(tmp, path)


def running_pid(path: Path) -> int | None:
    """The live init pid recorded in *path*, or None (missing, stale, dead)."""
    try:
        pid_s, start_s = path.read_text().split()[:2]
        pid, start = int(pid_s), int(start_s)
    except (OSError, ValueError):
        return None
    info = proc_start_time(pid)
    if info is None or info[0] in ("Z", "X") or info[1] != start:
        return None
    return pid


def wait_exit(pid: int, timeout: float) -> bool:
    """Wait until *pid* has exited (zombie counts); True if it did in time."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if poller.poll(max(0, int(left * 1000))):
                return True
            if left <= 0:
                return False
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


@contextlib.contextmanager
def flocked(path: str | Path) -> Iterator[None]:
    """Hold an exclusive flock on *path* (made 0600 if missing) for the block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
