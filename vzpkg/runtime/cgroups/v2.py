"""cgroup v2: the unified hierarchy (``/sys/fs/cgroup``).

The VE's group is ``<root>/<prefix>/<ctid>``.  :meth:`create` enables the
controllers the VE needs (cpu, cpuset, memory, pids, io — those the root
offers) in ``cgroup.subtree_control`` of the root and of ``<prefix>``, so the
VE's group gets their files.  :meth:`kill_all` uses ``cgroup.kill`` (Linux
5.14+) or freezes the group with ``cgroup.freeze`` before killing.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterable
from pathlib import Path

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
from vzpkg.runtime.cgroups.mapping import Write, host_has_swap, v2_writes
from vzpkg.runtime.config import VeConfig
from vzpkg.runtime.params import UNLIMITED
from vzpkg.runtime.ubc import Beancounter

WANTED = ("cpu", "cpuset", "memory", "pids", "io")


class CgroupsV2(Cgroups):
    version = 2
    wanted: tuple[str, ...] = WANTED  # controllers create() enables where offered

    def __init__(self, root: Path = Path("/sys/fs/cgroup"),
                 prefix: str = DEFAULT_PREFIX, extra: Iterable[Path] = ()) -> None:
        super().__init__(prefix, extra)
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"CgroupsV2({str(self.root)!r}, prefix={self.prefix!r})"

    def group(self, ctid: str) -> Path:
        return self.root / self.prefix / check_ctid(ctid)

    def available(self, where: Path | None = None) -> set[str]:
        """Controllers offered to the children of *where* (default: the root)."""
        return set((read_text((where or self.root) / "cgroup.controllers") or "").split())

    def exists(self, ctid: str) -> bool:
        return self.group(ctid).is_dir()

    def create(self, ctid: str) -> None:
        """The group with the controllers enabled for its ``ve`` leaf (where the
        processes go: a group with controllers for its children may hold none),
        and the device policy (a BPF program, devices.py) on it."""
        base = self.root / self.prefix
        g = self.group(ctid)
        made: list[Path] = []
        try:
            self._enable(self.root)
            make_dirs((base,), made)
            self._enable(base)
            make_dirs((g,), made)
            self._enable(g)
            make_dirs((g / LEAF,), made)
            if devices.is_cgroup2(g):   # (not in the unit tests' directory trees)
                devices.v2_attach(g, ctid)
            self._create_extra(ctid, made)
        except OSError as exc:
            undo_dirs(made)
            raise VeError(f"VE {ctid}: cannot create its cgroup under {base}: {exc}",
                          hint="cgroups can only be created by root") from None
        except VeError:
            undo_dirs(made)
            raise

    def _enable(self, where: Path) -> None:
        offered = self.available(where)
        enabled = set((read_text(where / "cgroup.subtree_control") or "").split())
        for c in self.wanted:
            if c in offered and c not in enabled:
                write_file(where / "cgroup.subtree_control", f"+{c}",
                           f"enable the {c} controller")

    def writes(self, cfg: VeConfig, ctid: str = "") -> list[Write]:
        return v2_writes(cfg, host_cpus(self.root / "cpuset.cpus.effective"), host_has_swap(),
                         self.io_schedulers(), spread=int(ctid) if ctid.isdigit() else 0)

    def cgroup2_root(self) -> Path | None:
        return self.root

    def apply(self, ctid: str, cfg: VeConfig) -> None:
        """Check every write first, then write: a limit that cannot be enforced
        leaves the group as it was."""
        g = self.group(ctid)
        if not g.is_dir():
            raise VeError(f"VE {ctid}: no cgroup {g}", hint="start the VE first")
        have = set((read_text(g / "cgroup.controllers") or "").split())
        todo: list[Write] = []
        for w in self.writes(cfg, ctid):
            f = g / w.file
            if w.controller not in have or not f.exists():
                if w.limiting:
                    why = (f"the cgroup v2 '{w.controller}' controller is not enabled for {g}"
                           if w.controller not in have else f"{f} does not exist")
                    raise VeError(
                        f"VE {ctid}: {w.param} cannot be enforced: {why}",
                        hint=f"enable it with `echo +{w.controller} > "
                             f"{self.root}/cgroup.subtree_control`, or remove {w.param} "
                             "from the VE's configuration")
                continue
            todo.append(w)
        for w in todo:
            write_file(g / w.file, w.value, f"VE {ctid}: {w.param}")

    def v2_leaves(self, ctid: str) -> list[Path]:
        return [self.group(ctid) / LEAF]

    def attach(self, ctid: str, pid: int) -> None:
        g = self.group(ctid)
        leaf = g / LEAF if (g / LEAF).is_dir() else g   # a group made before leaves
        write_file(leaf / "cgroup.procs", str(pid), f"VE {ctid}: attach pid {pid}")
        self._attach_extra(ctid, pid)

    def procs(self, ctid: str) -> list[int]:
        pids: set[int] = set()
        for d in walk_groups(self.group(ctid)):
            pids.update(parse_pids(read_text(d / "cgroup.procs")))
        return sorted(pids)

    def kill_all(self, ctid: str, sig: int = signal.SIGKILL, timeout: float = 10.0) -> None:
        g = self.group(ctid)
        if not g.is_dir():
            return
        if sig != signal.SIGKILL:
            signal_all(self.procs(ctid), sig)
            return
        if (g / "cgroup.kill").exists():
            write_file(g / "cgroup.kill", "1", f"VE {ctid}: kill")
        elif (g / "cgroup.freeze").exists():
            write_file(g / "cgroup.freeze", "1", f"VE {ctid}: freeze")
            deadline = time.monotonic() + min(timeout, 2.0)
            while read_keyed(g / "cgroup.events").get("frozen") != 1:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.002)
            signal_all(self.procs(ctid), signal.SIGKILL)
            write_file(g / "cgroup.freeze", "0", f"VE {ctid}: thaw")
        self._wait_empty(ctid, timeout)

    def remove(self, ctid: str) -> None:
        g = self.group(ctid)
        if not g.is_dir():
            self._remove_extra(ctid)
            return
        left = self.procs(ctid)
        if left:
            raise VeError(f"VE {ctid}: cannot remove its cgroup, processes {left[:10]} "
                          "are still in it", hint="stop the VE first")
        rmdir_tree(g)
        self._remove_extra(ctid)

    def list_ctids(self) -> list[str]:
        try:
            return sorted(p.name for p in (self.root / self.prefix).iterdir() if p.is_dir())
        except FileNotFoundError:
            return []

    def counters(self, ctid: str, cfg: VeConfig | None = None) -> list[Beancounter]:
        g = self.group(ctid)
        out: list[Beancounter] = []
        if (g / "memory.current").exists():
            stat = read_keyed(g / "memory.stat")
            kmem = stat.get("kernel", stat.get("slab", 0) + stat.get("kernel_stack", 0))
            out.append(Beancounter("kmemsize", kmem, kmem, UNLIMITED, UNLIMITED, 0))
            held = read_int(g / "memory.current") or 0
            limit = read_limit(g / "memory.max")
            high = read_limit(g / "memory.high")
            events = read_keyed(g / "memory.events")
            out.append(Beancounter(
                "physpages", pages(held), pages(read_int(g / "memory.peak") or held),
                barrier_from(cfg, "PHYSPAGES", pages(high)), pages(limit),
                events.get("max", 0)))
            if (g / "memory.swap.current").exists():
                sheld = read_int(g / "memory.swap.current") or 0
                slimit = read_limit(g / "memory.swap.max")
                out.append(Beancounter(
                    "swappages", pages(sheld),
                    pages(read_int(g / "memory.swap.peak") or sheld),
                    barrier_from(cfg, "SWAPPAGES", pages(slimit)), pages(slimit),
                    read_keyed(g / "memory.swap.events").get("max", 0)))
            out.append(Beancounter("oomguarpages", pages(held), pages(held),
                                   pages(read_int(g / "memory.low") or 0), UNLIMITED,
                                   events.get("oom_kill", 0)))
            out += _v2_memory_more(g, cfg, stat, held, limit, events)
        if (g / "pids.current").exists():
            held = read_int(g / "pids.current") or 0
            limit = read_limit(g / "pids.max")
            out.append(Beancounter(
                "numproc", held, read_int(g / "pids.peak") or held,
                barrier_from(cfg, "NUMPROC", limit), limit,
                read_keyed(g / "pids.events").get("max", 0)))
        return out


def _v2_memory_more(g: Path, cfg: VeConfig | None, stat: dict[str, int], held: int,
                    limit: int, events: dict[str, int]) -> list[Beancounter]:
    """The beancounters memory.stat and RAM + swap give (ubctable.UBCS)."""
    swap = read_int(g / "memory.swap.current") or 0
    swap_max = read_limit(g / "memory.swap.max")
    total = held + swap
    peak = (read_int(g / "memory.peak") or held) + (read_int(g / "memory.swap.peak") or swap)
    cap = UNLIMITED if limit >= UNLIMITED or swap_max >= UNLIMITED else limit + swap_max
    dcache = stat.get("slab_reclaimable", 0)
    return [
        Beancounter("lockedpages", pages(stat.get("unevictable", 0)),
                    pages(stat.get("unevictable", 0)),
                    barrier_from(cfg, "LOCKEDPAGES", UNLIMITED), UNLIMITED, 0),
        Beancounter("shmpages", pages(stat.get("shmem", 0)), pages(stat.get("shmem", 0)),
                    barrier_from(cfg, "SHMPAGES", UNLIMITED), UNLIMITED, 0),
        Beancounter("privvmpages", pages(total), pages(peak),
                    barrier_from(cfg, "PRIVVMPAGES", pages(cap)), pages(cap),
                    events.get("max", 0)),
        Beancounter("vmguarpages", pages(total), pages(peak),
                    barrier_from(cfg, "VMGUARPAGES", UNLIMITED), UNLIMITED, 0),
        Beancounter("dcachesize", dcache, dcache, barrier_from(cfg, "DCACHESIZE", UNLIMITED),
                    UNLIMITED, 0),
    ]
