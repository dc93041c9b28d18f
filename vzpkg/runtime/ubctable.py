"""OpenVZ's user beancounters: one declarative table, :data:`UBCS`.

Each row names a beancounter (its CTID.conf key), its unit, and what this runtime
does with it on each cgroup version:

* ``enforced``: a cgroup control holds the limit (the kernel refuses past it and
  counts the refusals);
* ``accounted``: the value is accepted and stored, ``held`` comes from a real kernel
  counter, but nothing refuses the VE at the limit (``vzctl set`` says so);
* ``refused``: no kernel control and no counter exists; ``vzctl set`` refuses any
  value but ``unlimited`` (a stock CTID.conf that names it still loads).

The table feeds :mod:`vzpkg.runtime.params` (the ``vzctl set`` options and the
CTID.conf checks), the cgroup mapping (:mod:`vzpkg.runtime.cgroups.mapping`), the
counters (:mod:`vzpkg.runtime.ubccount`), ``vzubc``, ``vzlist`` and the README's
table (:func:`ubc_markdown`; ``tests/unit/test_ubc_table.py`` keeps them equal).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Unit(StrEnum):
    PAGES = "pages"    # 4 KiB pages; K/M/G/T suffixes give sizes
    BYTES = "bytes"    # K/M/G/T suffixes accepted
    COUNT = "count"


class Mode(StrEnum):
    ENFORCED = "enforced"
    ACCOUNTED = "accounted"
    REFUSED = "refused"


@dataclass(frozen=True)
class Ubc:
    """One beancounter: how it is enforced or counted on cgroup v1 and v2."""

    key: str             # CTID.conf key, e.g. KMEMSIZE
    unit: Unit
    v1: Mode
    v2: Mode
    v1_how: str          # the control or counter on v1 (README)
    v2_how: str          # ... on v2
    help: str            # what it limits (vzctl set --help)

    @property
    def resource(self) -> str:
        """The name in /proc/user_beancounters (``kmemsize``)."""
        return self.key.lower()

    @property
    def option(self) -> str:
        return self.resource

    def mode(self, version: int) -> Mode:
        return self.v1 if version == 1 else self.v2


_E, _A, _R = Mode.ENFORCED, Mode.ACCOUNTED, Mode.REFUSED
_MEMSTAT = "memory.stat"
_NET = "the VE's /proc/net/{tcp,tcp6}"
_ONET = "the VE's /proc/net/{udp,udp6,udplite,udplite6,raw,raw6}"
_OSOCK = "the VE's /proc/net/{udp,udp6,udplite,udplite6,raw,raw6,unix,netlink,packet}"
_NOUNIX = "(not unix sockets': /proc/net/unix shows no queues)"
_PTY = ("pseudo-terminals the VE's processes hold open (/dev/pts/N, or a master's "
        "tty-index in /proc/PID/fdinfo; a pair counts once)")

# OpenVZ's order (the order of /proc/user_beancounters)
UBCS: tuple[Ubc, ...] = (
    Ubc("KMEMSIZE", Unit.BYTES, _A, _A,
        "memory.kmem.usage_in_bytes, .failcnt (the kernel no longer takes a kmem limit)",
        f"{_MEMSTAT} kernel",
        "kernel memory of the VE's processes"),
    Ubc("LOCKEDPAGES", Unit.PAGES, _A, _A, f"{_MEMSTAT} total_unevictable",
        f"{_MEMSTAT} unevictable", "memory locked with mlock()"),
    Ubc("PRIVVMPAGES", Unit.PAGES, _E, _E,
        "memory.memsw.limit_in_bytes (RAM + swap), memory.limit_in_bytes",
        "memory.max + memory.swap.max (RAM + swap)",
        "private memory the VE may allocate (RAM and swap together)"),
    Ubc("SHMPAGES", Unit.PAGES, _A, _A, f"{_MEMSTAT} total_shmem",
        f"{_MEMSTAT} shmem", "shared memory (SysV IPC, tmpfs)"),
    Ubc("NUMPROC", Unit.COUNT, _E, _E, "pids.max", "pids.max",
        "processes and threads"),
    Ubc("PHYSPAGES", Unit.PAGES, _E, _E,
        "memory.limit_in_bytes (limit), memory.soft_limit_in_bytes (barrier)",
        "memory.max (limit), memory.high (barrier)", "RAM"),
    Ubc("VMGUARPAGES", Unit.PAGES, _A, _A,
        "held: RAM + swap in use (a guarantee has no kernel control)",
        "held: RAM + swap in use (a guarantee has no kernel control)",
        "memory allocation guarantee"),
    Ubc("OOMGUARPAGES", Unit.PAGES, _A, _E,
        "held: RAM + swap in use; failcnt: OOM kills (v1 has no memory.low)",
        "memory.low (barrier); failcnt: OOM kills",
        "memory kept from reclaim and the OOM killer"),
    Ubc("NUMTCPSOCK", Unit.COUNT, _A, _A, _NET, _NET, "TCP sockets"),
    Ubc("NUMFLOCK", Unit.COUNT, _A, _A, "/proc/locks of the VE's processes",
        "/proc/locks of the VE's processes", "file locks"),
    Ubc("NUMPTY", Unit.COUNT, _A, _A, _PTY, _PTY, "pseudo-terminals"),
    Ubc("NUMSIGINFO", Unit.COUNT, _A, _A, "SigQ of the VE's users (/proc/PID/status)",
        "SigQ of the VE's users (/proc/PID/status)", "queued signals"),
    Ubc("TCPSNDBUF", Unit.BYTES, _E, _A,
        "memory.kmem.tcp.limit_in_bytes (TCPSNDBUF + TCPRCVBUF); held: send queues",
        f"held: send queues of {_NET} (no TCP memory limit on v2)",
        "TCP send buffers"),
    Ubc("TCPRCVBUF", Unit.BYTES, _E, _A,
        "memory.kmem.tcp.limit_in_bytes (TCPSNDBUF + TCPRCVBUF); held: receive queues",
        f"held: receive queues of {_NET} (no TCP memory limit on v2)",
        "TCP receive buffers"),
    Ubc("OTHERSOCKBUF", Unit.BYTES, _A, _A, f"send queues of {_ONET} {_NOUNIX}",
        f"send queues of {_ONET} {_NOUNIX}", "send buffers of other sockets"),
    Ubc("DGRAMRCVBUF", Unit.BYTES, _A, _A, f"receive queues of {_ONET} {_NOUNIX}",
        f"receive queues of {_ONET} {_NOUNIX}", "receive buffers of datagram sockets"),
    Ubc("NUMOTHERSOCK", Unit.COUNT, _A, _A, _OSOCK, _OSOCK, "sockets other than TCP"),
    Ubc("DCACHESIZE", Unit.BYTES, _R, _A,
        "no per-cgroup slab counter on v1",
        f"{_MEMSTAT} slab_reclaimable (dentries and inodes)",
        "dentry and inode caches"),
    Ubc("NUMFILE", Unit.COUNT, _A, _A, "open descriptors of the VE's processes",
        "open descriptors of the VE's processes", "open files"),
    Ubc("NUMIPTENT", Unit.COUNT, _R, _R,
        "the VE's firewall lives in its own network namespace, counted by no cgroup",
        "the VE's firewall lives in its own network namespace, counted by no cgroup",
        "firewall rules"),
    Ubc("SWAPPAGES", Unit.PAGES, _E, _E,
        "memory.memsw.limit_in_bytes = RAM + swap", "memory.swap.max", "swap"),
)

BY_KEY: dict[str, Ubc] = {u.key: u for u in UBCS}
BY_RESOURCE: dict[str, Ubc] = {u.resource: u for u in UBCS}
RESOURCES: tuple[str, ...] = tuple(u.resource for u in UBCS)

UNIT_WORDS = {Unit.PAGES: "4 KiB pages", Unit.BYTES: "bytes", Unit.COUNT: "count"}


def ubc_help(u: Ubc) -> str:
    """The ``vzctl set --KEY`` help text."""
    unit = {Unit.PAGES: "pages or sizes (256M)", Unit.BYTES: "bytes or sizes (32M)",
            Unit.COUNT: "a count"}[u.unit]
    how = ("enforced" if u.v1 is _E and u.v2 is _E else
           "refused but 'unlimited'" if u.v1 is _R and u.v2 is _R else
           f"v1 {u.v1}, v2 {u.v2}")
    return f"{u.help}: barrier:limit, {unit}; {how} (README: beancounters)"


def ubc_markdown() -> str:
    """The README's beancounter table, one row per :data:`UBCS` entry."""
    rows = ["| beancounter | unit | cgroup v1 | cgroup v2 |", "|---|---|---|---|"]
    for u in UBCS:
        rows.append(f"| `{u.key}` ({u.help}) | {UNIT_WORDS[u.unit]} | "
                    f"**{u.v1}**: {u.v1_how} | **{u.v2}**: {u.v2_how} |")
    return "\n".join(rows) + "\n"
