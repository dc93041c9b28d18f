"""All of a VE's beancounters, in OpenVZ's order (:data:`ubctable.UBCS`).

The memory and pids rows come from the VE's cgroup (``Cgroups.counters``).  The
rest are counted from what the kernel shows of the VE's processes and network
namespace, read from the host's /proc (kernel-generated files: nothing here reads
a file of the VE's tree or follows a VE's path):

* NUMFILE, NUMPTY: the open descriptors of the VE's processes (``/proc/PID/fd``;
  a pty is one whose target is ``/dev/pts/N``, or a master, ``ptmx``, whose
  ``/proc/PID/fdinfo`` names its ``tty-index`` N: a pair counts once);
* NUMFLOCK: the entries of ``/proc/locks`` held by the VE's processes;
* NUMSIGINFO: the queued signals of the VE's users (``SigQ`` of ``/proc/PID/status``,
  counted once per user: the kernel keeps it per user, and a VE's users are its own);
* NUMTCPSOCK, NUMOTHERSOCK, TCPSNDBUF, TCPRCVBUF, OTHERSOCKBUF, DGRAMRCVBUF: the
  sockets of the VE's network namespace and their queues (``/proc/INIT/net/*``).

These counters are snapshots: the kernel keeps no maximum for them, so their
``maxheld`` is the most seen by any vzubc or vzlist run since the VE started (kept
in ``VZ_ROOT/run/CTID.ubc``), and their ``failcnt`` is 0 (nothing refuses).  So is
the ``maxheld`` of the cgroup rows whose kernel counter has no maximum (memory.stat's
unevictable, shmem, kernel, slab: LOCKEDPAGES, SHMPAGES, ...).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path

from vzpkg.runtime.cgroups.base import Cgroups
from vzpkg.runtime.config import VeConfig
from vzpkg.runtime.params import UNLIMITED
from vzpkg.runtime.ubc import Beancounter
from vzpkg.runtime.ubctable import UBCS, Mode

_TCP = ("tcp", "tcp6")
_OTHER = ("udp", "udp6", "raw", "raw6", "udplite", "udplite6")
_COUNTED_ONLY = ("unix", "netlink", "packet")


def _queues(path: Path) -> tuple[int, int, int]:
    """(sockets, bytes queued to send, bytes queued to receive) of a /proc/net table."""
    n = tx = rx = 0
    with contextlib.suppress(OSError), open(path, "rb") as f:
        next(f, None)                          # the header
        for line in f:
            parts = line.split()
            if len(parts) < 5:
                continue
            n += 1
            t, _, r = parts[4].partition(b":")
            with contextlib.suppress(ValueError):
                tx += int(t, 16)
                rx += int(r, 16)
    return n, tx, rx


def _lines(path: Path) -> int:
    with contextlib.suppress(OSError), open(path, "rb") as f:
        return max(0, sum(1 for _ in f) - 1)
    return 0


def net_counts(init_pid: int) -> dict[str, int]:
    """The socket beancounters of the network namespace of *init_pid*."""
    net = Path(f"/proc/{init_pid}/net")
    tcp = [_queues(net / t) for t in _TCP]
    other = [_queues(net / t) for t in _OTHER]
    return {
        "numtcpsock": sum(q[0] for q in tcp),
        "tcpsndbuf": sum(q[1] for q in tcp),
        "tcprcvbuf": sum(q[2] for q in tcp),
        "numothersock": sum(q[0] for q in other) + sum(_lines(net / t)
                                                      for t in _COUNTED_ONLY),
        "othersockbuf": sum(q[1] for q in other),
        "dgramrcvbuf": sum(q[2] for q in other),
    }


def _sigq(pid: int) -> tuple[int, int] | None:
    """(real uid, queued signals of that uid) of process *pid*."""
    uid = queued = None
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"Uid:"):
                uid = int(line.split()[1])
            elif line.startswith(b"SigQ:"):
                queued = int(line.split()[1].split(b"/")[0])
    return None if uid is None or queued is None else (uid, queued)


_PTMX = (b"/dev/ptmx", b"/dev/pts/ptmx")


def _tty_index(fdinfo: str) -> bytes | None:
    """The pty number of a pty master's descriptor (its fdinfo's ``tty-index``)."""
    with contextlib.suppress(OSError), open(fdinfo, "rb") as f:
        for line in f:
            if line.startswith(b"tty-index:"):
                index = line.split()[1]
                return index if index.isdigit() else None
    return None


def _locks(pids: set[int], path: Path = Path("/proc/locks")) -> int:
    n = 0
    with contextlib.suppress(OSError), open(path, "rb") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 4 and parts[1] != b"->" and parts[4].isdigit() \
                    and int(parts[4]) in pids:
                n += 1
    return n


def process_counts(pids: Iterable[int]) -> dict[str, int]:
    """NUMFILE, NUMPTY, NUMFLOCK and NUMSIGINFO of the processes *pids*."""
    pidset = set(pids)
    files = 0
    ptys: set[bytes] = set()
    queued: dict[int, int] = {}
    for pid in pidset:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:          # gone meanwhile
            continue
        files += len(fds)
        for fd in fds:
            with contextlib.suppress(OSError):
                target = os.readlink(f"{fd_dir}/{fd}".encode())
                if target.startswith(b"/dev/pts/") and target[9:].isdigit():
                    ptys.add(target[9:])
                elif target in _PTMX:
                    index = _tty_index(f"/proc/{pid}/fdinfo/{fd}")
                    if index is not None:
                        ptys.add(index)
        q = _sigq(pid)
        if q is not None:
            queued[q[0]] = q[1]
    return {"numfile": files, "numpty": len(ptys), "numflock": _locks(pidset),
            "numsiginfo": sum(queued.values())}


def _load_max(path: Path | None) -> dict[str, int]:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, int)} \
        if isinstance(data, dict) else {}


def _save_max(path: Path | None, seen: Mapping[str, int]) -> None:
    if path is None:
        return
    with contextlib.suppress(OSError):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(dict(seen), sort_keys=True))
        tmp.replace(path)


def _conf_bl(cfg: VeConfig | None, key: str) -> tuple[int, int] | None:
    if cfg is None or not cfg.get(key):
        return None
    try:
        return cfg.barrier_limit(key)
    except ValueError:
        return None


def counters(cg: Cgroups, ctid: str, cfg: VeConfig | None, init_pid: int | None,
             maxfile: Path | None = None) -> list[Beancounter]:
    """Every beancounter of running VE *ctid*, in OpenVZ's order.  *maxfile* keeps
    the most seen of the snapshot counters (see the module's note)."""
    kernel = {bc.resource: bc for bc in cg.counters(ctid, cfg)}
    counted: dict[str, int] = {}
    pids = cg.procs(ctid)
    counted.update(process_counts(pids))
    if init_pid is not None:
        counted.update(net_counts(init_pid))
    if "numproc" not in kernel:
        counted["numproc"] = len(pids)
    seen = _load_max(maxfile)
    for res, n in counted.items():
        seen[res] = max(seen.get(res, 0), n)
    for res, row in list(kernel.items()):
        if res not in counted:          # (a kernel maximum, or none: then held)
            seen[res] = max(seen.get(res, 0), row.held)
            kernel[res] = replace(row, maxheld=max(row.maxheld, seen[res]))
    _save_max(maxfile, seen)
    out: list[Beancounter] = []
    for u in UBCS:
        res = u.resource
        mode = u.mode(cg.version)
        bl = _conf_bl(cfg, u.key)
        barrier, limit = bl if bl is not None else (UNLIMITED, UNLIMITED)
        bc = kernel.get(res)
        if res in counted:
            failcnt = bc.failcnt if bc is not None else 0
            bc = Beancounter(res, counted[res], seen.get(res, counted[res]), barrier, limit,
                             failcnt)
        elif bc is None:
            bc = Beancounter(res, 0, 0, barrier, limit, 0, counted=False)
        elif mode is not Mode.ENFORCED and bl is not None:
            bc = replace(bc, barrier=barrier, limit=limit)
        if mode is Mode.REFUSED:
            bc = replace(bc, counted=False, held=0, maxheld=0)
        out.append(bc)
    return out




