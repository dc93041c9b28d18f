"""cgroup v1: one hierarchy per controller (``/sys/fs/cgroup/memory``, ...).

The VE's group is ``<mount>/<prefix>/<ctid>`` in every controller hierarchy
found (co-mounted controllers such as ``cpu,cpuacct`` share one directory).
The freezer hierarchy, when mounted, makes :meth:`kill_all` race-free: the VE
is frozen, every task gets SIGKILL, then it is thawed.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from vzpkg.core import mountinfo as mounttable
from vzpkg.core.errors import VeError
from vzpkg.runtime.cgroups import devices
from vzpkg.runtime.cgroups.base import (
    DEFAULT_PREFIX,
    LEAF,
    Cgroups,
    barrier_from,
    check_ctid,
    host_cpus,
    make_dirs,
    pages,
    parse_pids,
    read_int,
    read_keyed,
    read_limit,
    read_text,
    rmdir_tree,
    signal_all,
    undo_dirs,
    walk_groups,
    write_file,
)
from vzpkg.runtime.cgroups.mapping import Write, host_has_swap, v1_writes
from vzpkg.runtime.config import VeConfig
from vzpkg.runtime.params import UNLIMITED, format_cpumask, parse_cpumask
from vzpkg.runtime.ubc import Beancounter

CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "pids", "freezer", "blkio", "devices")
_PROCS_FROM = ("pids", "freezer", "memory", "cpu")


class CgroupsV1(Cgroups):
    version = 1

    def __init__(self, mounts: Mapping[str, Path], prefix: str = DEFAULT_PREFIX,
                 extra: Iterable[Path] = ()) -> None:
        super().__init__(prefix, extra)
        self.mounts = {c: Path(p) for c, p in mounts.items() if c in CONTROLLERS}
        if not self.mounts:
            raise VeError("no cgroup v1 controller hierarchies found",
                          hint="mount them (e.g. memory, pids, cpu) under /sys/fs/cgroup")

    def __repr__(self) -> str:
        return f"CgroupsV1({sorted(self.mounts)}, prefix={self.prefix!r})"

    # -- paths ------------------------------------------------------------------------
    def group(self, controller: str, ctid: str) -> Path | None:
        m = self.mounts.get(controller)
        return None if m is None else m / self.prefix / check_ctid(ctid)

    def _dirs(self, ctid: str) -> list[Path]:
        seen: dict[Path, None] = {}
        for c in self.mounts:
            g = self.group(c, ctid)
            if g is not None:
                seen.setdefault(g, None)
        return list(seen)

    def _main(self, ctid: str) -> Path:
        for c in _PROCS_FROM:
            g = self.group(c, ctid)
            if g is not None:
                return g
        return self._dirs(ctid)[0]

    def v2_leaves(self, ctid: str) -> list[Path]:
        return [g / LEAF for g in self.extra_groups(ctid) if devices.is_cgroup2(g)]

    # -- lifecycle --------------------------------------------------------------------
    def exists(self, ctid: str) -> bool:
        return self._main(ctid).is_dir()

    def create(self, ctid: str) -> None:
        """The group in every controller hierarchy (and every extra one), the device
        policy on it while it has no children, then the ``ve`` leaf below it."""
        check_ctid(ctid)
        made: list[Path] = []
        groups = self._dirs(ctid)
        try:
            for g in groups:
                make_dirs((g.parent, g), made)
            if "cpuset" in self.mounts:  # also repairs a group left empty by a crash
                base = self.mounts["cpuset"] / self.prefix
                _inherit_cpuset(base)
                _inherit_cpuset(base / ctid)
            dev = self.group("devices", ctid)
            if dev is not None:
                self._devices(dev, ctid)
            make_dirs((g / LEAF for g in groups), made)
            if "cpuset" in self.mounts:
                _inherit_cpuset(self.mounts["cpuset"] / self.prefix / ctid / LEAF)
            self._create_extra(ctid, made)
            # a v1 host without the devices controller needs the BPF program on its
            # cgroup2 mount instead (with the controller, that would be a second copy
            # of the same policy, costing a program load per start)
            if dev is None:
                self._extra_devices(ctid, required=devices.is_cgroup1(self._main(ctid)))
        except (OSError, VeError) as exc:
            undo_dirs(made)
            if isinstance(exc, VeError):
                raise
            raise VeError(f"VE {ctid}: cannot create its cgroup: {exc}",
                          hint="cgroups can only be created by root") from None

    def _devices(self, g: Path, ctid: str) -> None:
        """Deny by default (devices.py).  The kernel refuses that on a group with
        children, so an empty leaf a crash left behind goes first."""
        if (g / LEAF).is_dir() and not devices.v1_in_place(g):
            if parse_pids(read_text(g / LEAF / "cgroup.procs")):
                raise VeError(f"VE {ctid}: processes are still in {g / LEAF}",
                              hint="stop the VE first")
            (g / LEAF).rmdir()
        if (g / "devices.deny").exists():
            devices.v1_apply(g, ctid)

    def _extra_devices(self, ctid: str, *, required: bool) -> None:
        """The same policy as a BPF program on a cgroup2 hierarchy beside the v1 ones:
        a second layer, or the only one when the devices controller is not mounted."""
        for g in self.extra_groups(ctid):
            if devices.is_cgroup2(g):
                try:
                    devices.v2_attach(g, ctid)
                    required = False
                except VeError:
                    if required:
                        raise
        if required:
            raise VeError(f"VE {ctid}: no device policy can be enforced: the cgroup v1 "
                          "devices controller is not mounted and there is no cgroup2 "
                          "hierarchy", hint="mount the devices controller "
                          "(mount -t cgroup -o devices none /sys/fs/cgroup/devices)")

    def writes(self, cfg: VeConfig, ctid: str = "") -> list[Write]:
        cpuset = self.mounts.get("cpuset")
        return v1_writes(cfg, host_cpus(cpuset / "cpuset.effective_cpus")
                         if cpuset else None, host_has_swap(), self.io_schedulers(),
                         spread=_spread(ctid))

    def apply(self, ctid: str, cfg: VeConfig) -> None:
        """Check every write first, then write: a limit that cannot be enforced
        leaves the group as it was."""
        todo: list[tuple[Path, Write]] = []
        for w in self.writes(cfg, ctid):
            g = self.group(w.controller, ctid)
            if g is None or not (g / w.file).exists():
                if w.limiting:
                    what = (f"the {w.controller} controller is not mounted" if g is None
                            else f"{g / w.file} does not exist")
                    raise VeError(f"VE {ctid}: {w.param} cannot be enforced: {what}",
                                  hint=f"mount the cgroup v1 {w.controller} controller, or "
                                       f"remove {w.param} from the VE's configuration")
                continue
            todo.append((g / w.file, w))
        for f, w in todo:
            if f.name == "cpuset.cpus" and (f.parent / LEAF / f.name).exists():
                _set_cpus(f.parent, w.value, f"VE {ctid}: {w.param}")
            else:
                write_file(f, w.value, f"VE {ctid}: {w.param}")

    def attach(self, ctid: str, pid: int) -> None:
        for d in self._dirs(ctid):
            leaf = d / LEAF if (d / LEAF).is_dir() else d   # a group made before leaves
            write_file(leaf / "cgroup.procs", str(pid), f"VE {ctid}: attach pid {pid}")
        self._attach_extra(ctid, pid)

    def procs(self, ctid: str) -> list[int]:
        pids: set[int] = set()
        for d in walk_groups(self._main(ctid)):
            pids.update(parse_pids(read_text(d / "cgroup.procs")))
        return sorted(pids)

    def kill_all(self, ctid: str, sig: int = signal.SIGKILL, timeout: float = 10.0) -> None:
        if sig != signal.SIGKILL:
            signal_all(self.procs(ctid), sig)
            return
        freezer = self.group("freezer", ctid)
        if freezer is not None and (freezer / "freezer.state").exists():
            self._freeze(freezer, ctid, "FROZEN", timeout)
            signal_all(self.procs(ctid), signal.SIGKILL)
            self._freeze(freezer, ctid, "THAWED", timeout)
        self._wait_empty(ctid, timeout)

    def _freeze(self, g: Path, ctid: str, state: str, timeout: float) -> None:
        write_file(g / "freezer.state", state, f"VE {ctid}: freezer")
        deadline = time.monotonic() + min(timeout, 2.0)
        while (read_text(g / "freezer.state") or "").strip() != state:
            if time.monotonic() > deadline:
                return  # killing works without a complete freeze, just less tidily
            time.sleep(0.002)

    def remove(self, ctid: str) -> None:
        left = self.procs(ctid) if self.exists(ctid) else []
        if left:
            raise VeError(f"VE {ctid}: cannot remove its cgroup, processes {left[:10]} "
                          "are still in it", hint="stop the VE first")
        for d in self._dirs(ctid):
            rmdir_tree(d)
        self._remove_extra(ctid)

    def list_ctids(self) -> list[str]:
        base = self._main("0").parent
        try:
            return sorted(p.name for p in base.iterdir() if p.is_dir())
        except FileNotFoundError:
            return []

    # -- counters ---------------------------------------------------------------------
    def counters(self, ctid: str, cfg: VeConfig | None = None) -> list[Beancounter]:
        out: list[Beancounter] = []
        mem = self.group("memory", ctid)
        if mem is not None and mem.is_dir():
            out += _memory_counters(mem, cfg)
        pids = self.group("pids", ctid)
        if pids is not None and pids.is_dir():
            held = read_int(pids / "pids.current") or 0
            limit = read_limit(pids / "pids.max")
            out.append(Beancounter(
                "numproc", held, read_int(pids / "pids.peak") or held,
                barrier_from(cfg, "NUMPROC", limit), limit,
                # v1 counts a refused fork where it happened: in the leaf
                sum(read_keyed(d / "pids.events").get("max", 0) for d in walk_groups(pids))))
        return out


def _memory_counters(g: Path, cfg: VeConfig | None) -> list[Beancounter]:
    usage = read_int(g / "memory.usage_in_bytes") or 0
    peak = read_int(g / "memory.max_usage_in_bytes") or usage
    limit = read_limit(g / "memory.limit_in_bytes")
    soft = read_limit(g / "memory.soft_limit_in_bytes")
    out = [Beancounter("kmemsize", read_int(g / "memory.kmem.usage_in_bytes") or 0,
                       read_int(g / "memory.kmem.max_usage_in_bytes") or 0,
                       UNLIMITED, UNLIMITED, read_int(g / "memory.kmem.failcnt") or 0)]
    # v1 counts an OOM kill in the group of the victim: the VE's leaf
    oom = sum(read_keyed(d / "memory.oom_control").get("oom_kill", 0) for d in walk_groups(g))
    # With memsw equal to the RAM limit (no swap) the kernel refuses charges at memsw,
    # whose failcnt it may not count; an OOM kill then is the evidence of the hit.
    fails = read_int(g / "memory.failcnt") or 0
    out.append(Beancounter("physpages", pages(usage), pages(peak),
                           barrier_from(cfg, "PHYSPAGES", pages(soft)), pages(limit),
                           fails or oom))
    sw_usage = read_int(g / "memory.memsw.usage_in_bytes")
    if sw_usage is not None:
        sw_peak = read_int(g / "memory.memsw.max_usage_in_bytes") or sw_usage
        sw_limit = read_limit(g / "memory.memsw.limit_in_bytes")
        swap_limit = (UNLIMITED if sw_limit >= UNLIMITED or limit >= UNLIMITED
                      else pages(sw_limit - limit))
        out.append(Beancounter("swappages", pages(max(0, sw_usage - usage)),
                               pages(max(0, sw_peak - peak)),
                               barrier_from(cfg, "SWAPPAGES", swap_limit), swap_limit,
                               read_int(g / "memory.memsw.failcnt") or 0))
    out.append(Beancounter("oomguarpages", pages(usage), pages(peak), 0, UNLIMITED, oom))
    out += _v1_memory_more(g, cfg, usage, peak, sw_usage, fails, oom)
    return out


def _v1_memory_more(g: Path, cfg: VeConfig | None, usage: int, peak: int,
                    sw_usage: int | None, fails: int, oom: int) -> list[Beancounter]:
    """The beancounters v1's memory controller adds (ubctable.UBCS): locked and
    shared pages from memory.stat (total_*: the VE's processes are in its leaf),
    private memory as RAM + swap, and the TCP buffers' failures."""
    stat = read_keyed(g / "memory.stat")
    total = sw_usage if sw_usage is not None else usage
    total_peak = read_int(g / "memory.memsw.max_usage_in_bytes") or peak
    memsw_fails = read_int(g / "memory.memsw.failcnt") or 0
    limit = read_limit(g / "memory.memsw.limit_in_bytes")
    if limit >= UNLIMITED:
        limit = read_limit(g / "memory.limit_in_bytes")
    tcp_fails = read_int(g / "memory.kmem.tcp.failcnt") or 0
    out = [Beancounter("lockedpages", pages(stat.get("total_unevictable", 0)),
                       pages(stat.get("total_unevictable", 0)),
                       barrier_from(cfg, "LOCKEDPAGES", UNLIMITED), UNLIMITED, 0),
           Beancounter("shmpages", pages(stat.get("total_shmem", 0)),
                       pages(stat.get("total_shmem", 0)),
                       barrier_from(cfg, "SHMPAGES", UNLIMITED), UNLIMITED, 0),
           Beancounter("privvmpages", pages(total), pages(total_peak),
                       barrier_from(cfg, "PRIVVMPAGES", pages(limit)), pages(limit),
                       max(memsw_fails, fails) or oom),
           Beancounter("vmguarpages", pages(total), pages(total_peak),
                       barrier_from(cfg, "VMGUARPAGES", UNLIMITED), UNLIMITED, 0)]
    for res in ("tcpsndbuf", "tcprcvbuf"):      # held: the sockets' queues (ubccount)
        out.append(Beancounter(res, 0, 0, UNLIMITED, UNLIMITED, tcp_fails))
    return out


def _spread(ctid: str) -> int:
    return int(ctid) if ctid.isdigit() else 0


def _cpus(text: str | None) -> set[int]:
    return set(parse_cpumask((text or "").strip()) or ()) if (text or "").strip() else set()


def _set_cpus(g: Path, value: str, what: str) -> None:
    """Move group *g* to CPUs *value* while its leaf has tasks: v1 wants the leaf's
    CPUs within the group's, and never empty, at every step."""
    leaf = g / LEAF / "cpuset.cpus"
    new = _cpus(value)
    both = new & _cpus(read_text(leaf))
    if both:
        steps = [(leaf, both), (g / "cpuset.cpus", new), (leaf, new)]
    else:
        grp = _cpus(read_text(g / "cpuset.cpus"))
        steps = [(g / "cpuset.cpus", grp | new), (leaf, new), (g / "cpuset.cpus", new)]
    for f, cpus in steps:
        write_file(f, format_cpumask(sorted(cpus)), what)


def _inherit_cpuset(d: Path) -> None:
    """A new v1 cpuset group starts with no CPUs and no memory nodes: copy the parent's."""
    for f in ("cpuset.cpus", "cpuset.mems"):
        if not (read_text(d / f) or "").strip():
            write_file(d / f, (read_text(d.parent / f) or "").strip(), f"cgroup {d}")


def _cgroup_mounts(root: Path, mountinfo: Path) -> list[tuple[str, Path, list[str]]]:
    """(fs type, mount point, super options) of the cgroup mounts at or below *root*."""
    try:
        mounts = mounttable.read(mountinfo)
    except OSError:
        mounts = []
    out = []
    for m in mounts:
        if m.fstype not in ("cgroup", "cgroup2"):
            continue
        point = Path(m.point)
        if point == root or root in point.parents:
            out.append((m.fstype, point, list(m.options)))
    return out


def find_extra(root: Path, mountinfo: Path = Path("/proc/self/mountinfo"),
               skip: Path | None = None) -> list[Path]:
    """Hierarchies at or below *root* without resource controllers that processes are
    still placed in: named v1 ones (``name=systemd``) and cgroup2 mounts (but *skip*)."""
    out: list[Path] = []
    for fstype, point, opts in _cgroup_mounts(root, mountinfo):
        if point == skip or point in out:
            continue
        named = any(o.startswith("name=") for o in opts)
        if fstype == "cgroup2" or (named and not any(o in CONTROLLERS for o in opts)):
            out.append(point)
    return out


def find_mounts(root: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> dict[str, Path]:
    """controller -> mount point of the v1 hierarchies at or below *root*."""
    out: dict[str, Path] = {}
    for fstype, point, opts in _cgroup_mounts(root, mountinfo):
        for opt in opts if fstype == "cgroup" else ():
            if opt in CONTROLLERS:
                out.setdefault(opt, point)
    if not out:  # a plain directory tree (tests), or mountinfo unreadable
        for c in CONTROLLERS:
            if (root / c / "cgroup.procs").exists():
                out[c] = root / c
    return out
