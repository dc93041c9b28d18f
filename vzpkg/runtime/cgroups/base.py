"""What both cgroup versions share: the interface and small file helpers."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path

from vzpkg.core.errors import VeError
from vzpkg.runtime.cgroups.mapping import IoSchedulers, Write
from vzpkg.runtime.config import VeConfig
from vzpkg.runtime.params import UNLIMITED, parse_cpumask
from vzpkg.runtime.ubc import Beancounter

DEFAULT_PREFIX = "vzpkg"
# A VE's processes live in <group>/LEAF; its limits sit on <group>.  On cgroup v2 a
# group that enables controllers for its children may hold no processes itself, so
# the leaf is what lets the VE's subtree be delegated; v1 does the same for symmetry.
LEAF = "ve"
# the files of a leaf its owner needs to manage the subtree (cgroup v2 delegation)
DELEGATED = ("cgroup.procs", "cgroup.threads", "cgroup.subtree_control")
_CTID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # fullmatch: not "$" (a final "\n")
_NEAR_MAX = 1 << 62  # v1 reports "no limit" as LONG_MAX rounded down to a page


def check_ctid(ctid: str) -> str:
    if not _CTID.fullmatch(ctid):
        raise VeError(f"{ctid!r} is not a valid CTID",
                      hint="use a number such as 101 (or a name of letters, digits, _.-)")
    return ctid


def read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError as exc:
        if exc.errno in (errno.ENODEV, errno.ENOENT):
            return None
        raise VeError(f"cannot read {path}: {exc.strerror}") from None


def read_int(path: Path, default: int | None = None) -> int | None:
    """An integer file; "max" and v1's near-LONG_MAX are :data:`UNLIMITED`;
    *default* when the file is missing or unreadable."""
    t = read_text(path)
    if t is None:
        return default
    t = t.split()[0] if t.split() else ""
    if t == "max":
        return UNLIMITED
    try:
        n = int(t)
    except ValueError:
        return default
    return UNLIMITED if n >= _NEAR_MAX or n < 0 else n


def read_limit(path: Path) -> int:
    """A limit file; missing or "max" is :data:`UNLIMITED`."""
    n = read_int(path, UNLIMITED)
    return UNLIMITED if n is None else n


def read_keyed(path: Path) -> dict[str, int]:
    """A flat-keyed file (``max 3``, ``oom_kill 1`` lines)."""
    out: dict[str, int] = {}
    for line in (read_text(path) or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def write_file(path: Path, value: str, what: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as exc:
        hint = None
        if exc.errno == errno.EBUSY and path.name == "cgroup.subtree_control":
            hint = (f"processes in {path.parent} itself keep cgroup v2 from enabling "
                    "controllers below it; move them into a child group")
        elif exc.errno == errno.EBUSY and ("limit" in path.name or path.name == "memory.max"):
            hint = "the VE uses more than the new limit; stop some of its processes first"
        elif exc.errno in (errno.EACCES, errno.EPERM):
            hint = "cgroups can only be changed by root"
        elif exc.errno == errno.EINVAL:
            hint = "the kernel refused the value; check the parameter's range"
        raise VeError(f"{what}: cannot write {value!r} to {path}: {exc.strerror}",
                      hint=hint) from None


def parse_pids(text: str | None) -> list[int]:
    return [int(x) for x in (text or "").split() if x.isdigit()]


def walk_groups(top: Path) -> Iterator[Path]:
    """*top* and every group below it, children before parents."""
    try:   # the file type from the directory listing: no stat per control file
        with os.scandir(top) as it:
            subs = sorted(top / e.name for e in it if e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return
    for s in subs:
        yield from walk_groups(s)
    yield top


def rmdir_tree(top: Path) -> None:
    for d in walk_groups(top):
        for attempt in range(50):
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY or attempt == 49:
                    raise VeError(f"cannot remove cgroup {d}: {exc.strerror}",
                                  hint="stop the VE first (its processes are still there)"
                                  ) from None
                time.sleep(0.02)


def host_cpus(cpuset_file: Path) -> tuple[int, ...] | None:
    text = (read_text(cpuset_file) or "").strip()
    return parse_cpumask(text) if text else None


def signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def make_dirs(dirs: Iterable[Path], made: list[Path]) -> None:
    """mkdir each of *dirs* that is missing, in order; record the new ones in *made*."""
    for d in dirs:
        if not d.is_dir():
            d.mkdir()
            made.append(d)


def undo_dirs(made: list[Path]) -> None:
    for d in reversed(made):
        with contextlib.suppress(OSError):
            d.rmdir()


class Cgroups(ABC):
    """The VEs' cgroups: one group per VE, ``<controller root>/<prefix>/<ctid>``, its
    processes in the group's ``ve`` leaf.

    *extra* are hierarchies that hold no limits but must still place the VE's
    processes in a group of their own (a v1 host's ``name=systemd`` hierarchy and its
    controller-less cgroup2 mount): a cgroup namespace the VE's init makes after
    :meth:`attach` is then rooted at the VE's group in every hierarchy, and
    /proc/PID/cgroup of a VE never shows the host's tree."""

    version: int

    def __init__(self, prefix: str = DEFAULT_PREFIX, extra: Iterable[Path] = ()) -> None:
        self.prefix = prefix
        self.extra = list(dict.fromkeys(Path(e) for e in extra))
        self.io: IoSchedulers | None = None    # None: read the host's, at each apply

    def io_schedulers(self) -> IoSchedulers:
        """What the host's disks do with an I/O weight (IOPRIO): BFQ, io.cost."""
        if self.io is not None:
            return self.io
        return IoSchedulers.of_host(self.cgroup2_root())

    def cgroup2_root(self) -> Path | None:
        """The cgroup2 root whose io.cost.qos counts (a v2 host's); None on v1."""
        return None

    def extra_groups(self, ctid: str) -> list[Path]:
        return [e / self.prefix / check_ctid(ctid) for e in self.extra]

    def _create_extra(self, ctid: str, made: list[Path]) -> None:
        for g in self.extra_groups(ctid):
            make_dirs((g.parent, g, g / LEAF), made)

    def _attach_extra(self, ctid: str, pid: int) -> None:
        for g in self.extra_groups(ctid):
            write_file(g / LEAF / "cgroup.procs", str(pid), f"VE {ctid}: attach pid {pid}")

    def _remove_extra(self, ctid: str) -> None:
        for g in self.extra_groups(ctid):
            rmdir_tree(g)

    @abstractmethod
    def v2_leaves(self, ctid: str) -> list[Path]:
        """The VE's leaves on cgroup2 hierarchies: where its init's cgroup namespace is
        rooted and what its init may manage (v2 hosts: the limit-holding hierarchy;
        v1 hosts: the controller-less cgroup2 mount beside it)."""

    def delegate(self, ctid: str, uid: int) -> None:
        """Hand the VE's cgroup2 leaves to host uid *uid* (the VE's root): its init
        may make and manage groups below them, as systemd does.  The limits stay on
        the group above, which the VE neither sees nor can write."""
        for leaf in self.v2_leaves(ctid):
            for path in (leaf, *(leaf / f for f in DELEGATED)):
                if path.exists():
                    os.chown(path, uid, uid)

    @abstractmethod
    def create(self, ctid: str) -> None:
        """Make the VE's group (idempotent)."""

    @abstractmethod
    def exists(self, ctid: str) -> bool: ...

    @abstractmethod
    def writes(self, cfg: VeConfig, ctid: str = "") -> list[Write]:
        """The file writes :meth:`apply` performs for *cfg* (for tests and dry runs)."""

    @abstractmethod
    def apply(self, ctid: str, cfg: VeConfig) -> None:
        """Put *cfg*'s limits on the VE's group, at once (live)."""

    @abstractmethod
    def attach(self, ctid: str, pid: int) -> None:
        """Move process *pid* into the VE's group (0: the calling process)."""

    @abstractmethod
    def procs(self, ctid: str) -> list[int]:
        """PIDs (host view) in the VE's group and its subgroups; [] if none."""

    @abstractmethod
    def kill_all(self, ctid: str, sig: int = signal.SIGKILL, timeout: float = 10.0) -> None:
        """Send *sig* to every process of the VE; for SIGKILL wait until none is left."""

    @abstractmethod
    def remove(self, ctid: str) -> None:
        """Remove the VE's group (it must be empty); a missing group is fine."""

    @abstractmethod
    def counters(self, ctid: str, cfg: VeConfig | None = None) -> list[Beancounter]:
        """Beancounters of the VE; barriers the kernel does not keep come from *cfg*."""

    @abstractmethod
    def list_ctids(self) -> list[str]:
        """CTIDs that have a group."""

    def _wait_empty(self, ctid: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            left = self.procs(ctid)
            if not left:
                return
            if time.monotonic() >= deadline:
                raise VeError(f"VE {ctid}: processes {left[:10]} are still running after "
                              f"{timeout:.0f}s", hint="they may be stuck in the kernel (D state);"
                              " check with ps and try again")
            signal_all(left, signal.SIGKILL)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


def barrier_from(cfg: VeConfig | None, key: str, default: int) -> int:
    """The barrier of *key* in *cfg* (OpenVZ units), else *default*."""
    if cfg is None or cfg.get(key) is None:
        return default
    bl = cfg.barrier_limit(key)
    if bl is None:
        return default
    return bl[0]


def pages(n: int | None) -> int:
    if n is None:
        return 0
    return n if n >= UNLIMITED else n // 4096
