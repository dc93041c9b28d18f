"""OpenVZ parameters -> cgroup files, for cgroup v1 and v2.

Pure functions: given a :class:`VeConfig` they return the ordered list of
:class:`Write` s that put the VE's limits in place.  Every managed file is
written every time (unset parameters write "no limit"), so ``apply`` is also how
a limit is removed from a running VE.

=============  =================================  ==========================================
parameter      cgroup v2                          cgroup v1
=============  =================================  ==========================================
CPUUNITS       cpu.weight = units / 10 (1..10000)  cpu.shares = units * 1024 / 1000
CPULIMIT/CPUS  cpu.max = "QUOTA 100000"            cpu.cfs_period_us, cpu.cfs_quota_us
CPUMASK        cpuset.cpus                         cpuset.cpus
CPUS (no mask) cpuset.cpus: CPUS of the host's CPUs (so nproc inside says CPUS)
PHYSPAGES      memory.max (limit),                 memory.limit_in_bytes (limit),
               memory.high (barrier if < limit)    memory.soft_limit_in_bytes (barrier)
SWAPPAGES      memory.swap.max                     memory.memsw.limit_in_bytes = RAM + swap
PRIVVMPAGES    memory.max, memory.swap.max capped   memory.limit_in_bytes, memsw capped
               so that RAM + swap <= PRIVVMPAGES   so that RAM + swap <= PRIVVMPAGES
OOMGUARPAGES   memory.low = barrier                (no memory.low on v1: accounted)
TCPSNDBUF,     (no TCP memory limit on v2)         memory.kmem.tcp.limit_in_bytes =
TCPRCVBUF                                          TCPSNDBUF + TCPRCVBUF limits
NUMPROC        pids.max (limit)                    pids.max (limit)
IOPRIO         io.bfq.weight (BFQ) and/or          blkio.bfq.weight (BFQ)
               io.weight (io.cost): both
               100 * 2^((prio-4)/2)
=============  =================================  ==========================================

CPULIMIT is in percent of one CPU and CPUS in whole CPUs; the lower of the two
is the quota.  A PHYSPAGES barrier of 0 (OpenVZ's usual ``0:LIMIT``) or equal to
the limit means no soft limit.  A swap limit needs the kernel's swap accounting
(``memory.swap.max`` / ``memory.memsw.*``); when the host has no swap device at all
the limit holds trivially, so only a host *with* swap but without accounting makes
a SWAPPAGES limit an error.  IOPRIO 4 is the
default weight (100); each step up or down multiplies or divides it by about 1.4.
IOPRIO is a hint, never a limit, written only to the weight file of a scheduler the
host's disks use (:class:`IoSchedulers`): BFQ reads ``io.bfq.weight`` (v2) or
``blkio.bfq.weight`` (v1); io.cost, a v2 controller, reads ``io.weight``.  A host with
neither (mq-deadline, kyber or none on every disk) runs the VE without it, and
``vzctl set --ioprio`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vzpkg.core.errors import VeError
from vzpkg.runtime.config import VeConfig
from vzpkg.runtime.params import UNLIMITED, format_cpumask

CFS_PERIOD_US = 100_000
DEFAULT_CPUUNITS = 1000
DEFAULT_IOPRIO = 4


@dataclass(frozen=True)
class Write:
    """Write *value* to *file* of the VE's group in *controller*.

    *limiting* is True when the value is a real limit; a missing controller is
    then an error rather than something to skip.
    """

    controller: str
    file: str
    value: str
    limiting: bool = True
    param: str = ""


def host_has_swap(swaps: Path = Path("/proc/swaps")) -> bool:
    """True when the host has an active swap device or file."""
    try:
        return len(swaps.read_text().splitlines()) > 1
    except OSError:
        return True


def cpu_shares(units: int) -> int:
    return max(2, min(262144, units * 1024 // DEFAULT_CPUUNITS))


def cpu_weight(units: int) -> int:
    return max(1, min(10000, round(units * 100 / DEFAULT_CPUUNITS)))


def cpu_quota_us(cfg: VeConfig) -> int | None:
    """The CFS quota per 100 ms period, or None for no cap."""
    caps = [pct for pct in (cfg.get_int("CPULIMIT") or 0, (cfg.get_int("CPUS") or 0) * 100)
            if pct > 0]
    return min(caps) * CFS_PERIOD_US // 100 if caps else None


def io_weight(prio: int) -> int:
    return round(100 * 2 ** ((prio - DEFAULT_IOPRIO) / 2))


BLOCK = Path("/sys/block")


@dataclass(frozen=True)
class IoSchedulers:
    """What the host's disks do with an I/O weight: *bfq*, some disk uses the BFQ
    scheduler (which reads ``io.bfq.weight``, v1 ``blkio.bfq.weight``); *iocost*,
    the io.cost controller is enabled for some disk (cgroup v2's ``io.cost.qos``;
    it reads ``io.weight``)."""

    bfq: bool = False
    iocost: bool = False

    @classmethod
    def of_host(cls, cgroup2_root: Path | None, block: Path = BLOCK) -> IoSchedulers:
        bfq = False
        for f in block.glob("*/queue/scheduler"):
            try:
                bfq = "[bfq]" in f.read_text()
            except OSError:
                continue
            if bfq:
                break
        iocost = False
        if cgroup2_root is not None:
            try:
                qos = (cgroup2_root / "io.cost.qos").read_text()
            except OSError:
                qos = ""
            iocost = any("enable=1" in line.split() for line in qos.splitlines())
        return cls(bfq, iocost)

    def files(self, version: int) -> list[str]:
        """The weight files that act on this host, for cgroup *version*."""
        if version == 1:
            return ["blkio.bfq.weight"] if self.bfq else []
        return [*(["io.bfq.weight"] if self.bfq else []),
                *(["io.weight"] if self.iocost else [])]

    def unused_because(self, version: int) -> str:
        """Why an IOPRIO does nothing on this host, or "" when it does."""
        if self.files(version):
            return ""
        if version == 1:
            return ("no disk uses the BFQ I/O scheduler (/sys/block/*/queue/scheduler), "
                    "and cgroup v1 has no other I/O weight")
        return ("no disk uses the BFQ I/O scheduler (/sys/block/*/queue/scheduler) and "
                "none has the io.cost controller enabled (io.cost.qos)")


def _io_writes(version: int, prio: int, io: IoSchedulers) -> list[Write]:
    """IOPRIO's writes (hints, not limits: skipped where the file is missing)."""
    w = io_weight(prio)
    return [Write("blkio" if version == 1 else "io", f,
                  f"default {w}" if f == "io.weight" else str(w), False, "IOPRIO")
            for f in io.files(version)]


def _ioprio(cfg: VeConfig) -> int:
    prio = cfg.get_int("IOPRIO")
    return DEFAULT_IOPRIO if prio is None else prio


def _units(cfg: VeConfig) -> int:
    return cfg.get_int("CPUUNITS") or DEFAULT_CPUUNITS


def _memory(cfg: VeConfig) -> tuple[int | None, int | None, int | None]:
    """(ram limit, ram soft limit, swap limit) in bytes; None = unlimited."""
    phys = cfg.barrier_limit_bytes("PHYSPAGES")
    swap = cfg.barrier_limit_bytes("SWAPPAGES")
    limit = soft = swap_limit = None
    if phys is not None:
        b, lim = phys
        limit = None if lim >= UNLIMITED else lim
        if 0 < b < lim:
            soft = b
    if swap is not None and swap[1] < UNLIMITED:
        swap_limit = swap[1]
    return limit, soft, swap_limit


def _limit_bytes(cfg: VeConfig, key: str) -> int | None:
    """The limit of a beancounter in bytes; None when unset or unlimited."""
    bl = cfg.barrier_limit_bytes(key) if key.endswith("PAGES") else cfg.barrier_limit(key)
    return None if bl is None or bl[1] >= UNLIMITED else bl[1]


def _oomguar(cfg: VeConfig) -> int | None:
    """OOMGUARPAGES's barrier in bytes: memory the kernel protects (memory.low)."""
    bl = cfg.barrier_limit_bytes("OOMGUARPAGES")
    return None if bl is None or bl[0] <= 0 or bl[0] >= UNLIMITED else bl[0]


def _tcp(cfg: VeConfig) -> int | None:
    """The TCP buffer memory limit (v1): TCPSNDBUF's and TCPRCVBUF's limits added."""
    parts = [_limit_bytes(cfg, k) for k in ("TCPSNDBUF", "TCPRCVBUF")]
    given = [n for n in parts if n is not None]
    return sum(given) if given else None


def _min(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _numproc(cfg: VeConfig) -> int | None:
    bl = cfg.barrier_limit("NUMPROC")
    return None if bl is None or bl[1] >= UNLIMITED else bl[1]


def cpus_for(count: int, host_cpus: tuple[int, ...], spread: int) -> tuple[int, ...]:
    """*count* of the host's CPUs for a VE with ``CPUS=count`` and no CPUMASK, so that
    ``nproc`` in it says *count*: a run of CPUs starting at *spread* (the CTID), so
    that VEs spread over the host rather than all taking its first CPUs."""
    n = len(host_cpus)
    if count >= n:
        return host_cpus
    return tuple(sorted(host_cpus[(spread + i) % n] for i in range(count)))


def _cpus(cfg: VeConfig, host_cpus: tuple[int, ...] | None,
          spread: int = 0) -> tuple[int, ...] | None:
    mask = cfg.cpumask()
    count = cfg.get_int("CPUS") or 0
    if mask is None and count > 0 and host_cpus is not None and count < len(host_cpus):
        return cpus_for(count, host_cpus, spread)
    if mask is not None and host_cpus is not None:
        missing = sorted(set(mask) - set(host_cpus))
        if missing:
            raise VeError(f"CPUMASK {format_cpumask(mask)} names CPUs the host does not have:"
                          f" {format_cpumask(missing)}",
                          hint=f"the host's CPUs are {format_cpumask(host_cpus)}")
    return mask


@dataclass(frozen=True)
class _Values:
    """What a configuration asks of the cgroup controllers, in kernel units."""

    units: int
    quota: int | None
    limit: int | None
    soft: int | None
    swap: int | None
    nproc: int | None
    mask: tuple[int, ...] | None
    prio: int
    privvm: int | None = None    # RAM + swap cap (PRIVVMPAGES), bytes
    low: int | None = None       # OOMGUARPAGES barrier, bytes
    tcp: int | None = None       # TCPSNDBUF + TCPRCVBUF limit, bytes

    @classmethod
    def of(cls, cfg: VeConfig, host_cpus: tuple[int, ...] | None,
           spread: int = 0) -> _Values:
        limit, soft, swap = _memory(cfg)
        privvm = _limit_bytes(cfg, "PRIVVMPAGES")
        return cls(_units(cfg), cpu_quota_us(cfg), _min(limit, privvm), soft, swap,
                   _numproc(cfg), _cpus(cfg, host_cpus, spread), _ioprio(cfg), privvm,
                   _oomguar(cfg), _tcp(cfg))

    def total(self) -> int | None:
        """RAM + swap at most (bytes): PHYSPAGES + SWAPPAGES, capped by PRIVVMPAGES."""
        both = self.limit + self.swap if self.limit is not None and self.swap is not None \
            else None
        return _min(both, self.privvm)


def v2_writes(cfg: VeConfig, host_cpus: tuple[int, ...] | None = None,
              host_swap: bool = True, io: IoSchedulers = IoSchedulers(),
              spread: int = 0) -> list[Write]:
    v = _Values.of(cfg, host_cpus, spread)
    units, quota, limit, soft, swap, nproc, mask, prio = (
        v.units, v.quota, v.limit, v.soft, v.swap, v.nproc, v.mask, v.prio)
    total = v.total()
    if total is not None and limit is not None:     # swap.max: what RAM leaves of it
        swap = max(0, total - limit)
    return [
        Write("cpu", "cpu.weight", str(cpu_weight(units)), units != DEFAULT_CPUUNITS,
              "CPUUNITS"),
        Write("cpu", "cpu.max", f"{quota if quota else 'max'} {CFS_PERIOD_US}",
              quota is not None, "CPULIMIT"),
        Write("cpuset", "cpuset.cpus", format_cpumask(mask) if mask else "",
              cfg.cpumask() is not None, "CPUMASK"),   # (CPUS alone: a hint for nproc)
        Write("memory", "memory.max", str(limit) if limit is not None else "max", limit is not None,
              "PHYSPAGES"),
        Write("memory", "memory.high", str(soft) if soft else "max", soft is not None,
              "PHYSPAGES"),
        Write("memory", "memory.swap.max", str(swap) if swap is not None else "max",
              swap is not None and host_swap,
              "SWAPPAGES" if v.privvm is None else "PRIVVMPAGES"),
        Write("memory", "memory.low", str(v.low) if v.low is not None else "0",
              v.low is not None, "OOMGUARPAGES"),
        Write("pids", "pids.max", str(nproc) if nproc is not None else "max",
              nproc is not None, "NUMPROC"),
        *_io_writes(2, prio, io),
    ]


def v1_writes(cfg: VeConfig, host_cpus: tuple[int, ...] | None = None,
              host_swap: bool = True, io: IoSchedulers = IoSchedulers(),
              spread: int = 0) -> list[Write]:
    """Writes for v1.  memsw is first opened up so that the RAM limit can move either
    way (the kernel insists memsw >= memory), then set to RAM + swap."""
    v = _Values.of(cfg, host_cpus, spread)
    units, quota, limit, soft, _, nproc, mask, prio = (
        v.units, v.quota, v.limit, v.soft, v.swap, v.nproc, v.mask, v.prio)
    cpus = mask if mask is not None else host_cpus
    memsw = v.total()
    out = [
        Write("cpu", "cpu.shares", str(cpu_shares(units)), units != DEFAULT_CPUUNITS,
              "CPUUNITS"),
        Write("cpu", "cpu.cfs_period_us", str(CFS_PERIOD_US), quota is not None, "CPULIMIT"),
        Write("cpu", "cpu.cfs_quota_us", str(quota) if quota else "-1", quota is not None,
              "CPULIMIT"),
    ]
    if cpus is not None:
        out.append(Write("cpuset", "cpuset.cpus", format_cpumask(cpus),
                         cfg.cpumask() is not None, "CPUMASK"))
    out += [
        Write("memory", "memory.memsw.limit_in_bytes", "-1", False, "SWAPPAGES"),
        Write("memory", "memory.limit_in_bytes", str(limit) if limit is not None else "-1",
              limit is not None, "PHYSPAGES"),
        Write("memory", "memory.soft_limit_in_bytes", str(soft) if soft else "-1",
              soft is not None, "PHYSPAGES"),
        Write("memory", "memory.memsw.limit_in_bytes", str(memsw) if memsw is not None else "-1",
              memsw is not None and host_swap,
              "SWAPPAGES" if v.privvm is None else "PRIVVMPAGES"),
    ]
    # only a VE that names TCPSNDBUF or TCPRCVBUF: the first write to this file turns
    # on v1's TCP memory accounting for the group, which other VEs need not pay for
    if any(cfg.get(k) for k in ("TCPSNDBUF", "TCPRCVBUF")):
        out.append(Write("memory", "memory.kmem.tcp.limit_in_bytes",
                         str(v.tcp) if v.tcp is not None else "-1", v.tcp is not None,
                         "TCPSNDBUF"))
    out += [
        Write("pids", "pids.max", str(nproc) if nproc is not None else "max",
              nproc is not None, "NUMPROC"),
        *_io_writes(1, prio, io),
    ]
    return out
