"""Per-VE figures read from the host's /proc: how long a VE's init has run, and how
many of the VE's tasks want a CPU (or wait in the kernel) right now.

OpenVZ's kernel kept a load average per VE; a mainline kernel keeps one for the
whole host only (``/proc/loadavg`` inside a VE is the host's).  What can be read
honestly without sampling over time is the instantaneous count the kernel's load
average is made of: the VE's tasks (threads) in state R (running or runnable)
or D (uninterruptible sleep).  :func:`runnable_tasks` returns that count; it is
a snapshot, not a decayed 1/5/15-minute average.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterable

from vzpkg.runtime.state import proc_start_time

LOAD_STATES = frozenset("RD")   # what the kernel's load average counts


def clock_ticks() -> int:
    """The unit of /proc/PID/stat's times (USER_HZ, 100 on Linux)."""
    return os.sysconf("SC_CLK_TCK")


def process_uptime(pid: int, now: float | None = None) -> float | None:
    """Seconds since process *pid* started; None when there is no such process.

    /proc/PID/stat's starttime counts clock ticks since boot on CLOCK_BOOTTIME
    (suspended time included), so it is compared with that clock."""
    info = proc_start_time(pid)
    if info is None:
        return None
    if now is None:
        now = time.clock_gettime(time.CLOCK_BOOTTIME)
    return max(0.0, now - info[1] / clock_ticks())


def _task_state(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError:        # the task exited meanwhile, or is not ours to read
        return None
    end = raw.rfind(b")")
    if end < 0 or end + 2 >= len(raw):
        return None
    return raw[end + 2:end + 3].decode("ascii", "replace")


def task_states(pids: Iterable[int]) -> Counter[str]:
    """How many threads of the processes *pids* are in each state (R, S, D, ...).
    Processes and threads that end while they are read are left out."""
    out: Counter[str] = Counter()
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            st = _task_state(f"/proc/{pid}/task/{tid}/stat")
            if st is not None:
                out[st] += 1
    return out


def runnable_tasks(pids: Iterable[int]) -> int:
    """The instantaneous load of the processes *pids*: their threads in state R or D
    (see the module's note: not a decayed average)."""
    states = task_states(pids)
    return sum(n for s, n in states.items() if s in LOAD_STATES)
