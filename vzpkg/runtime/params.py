"""The OpenVZ parameter table.

One declarative table (:data:`PARAMS`) drives three readers: the ``vzctl set``
/ ``vzctl create`` options (:func:`add_set_options`, :func:`options_to_values`),
the validation of ``CTID.conf`` values (:func:`normalize`, used by
:mod:`vzpkg.runtime.config`) and the cgroup mapping (``Param.controller``, used by
:mod:`vzpkg.runtime.cgroups`).

Value syntax follows OpenVZ:

* ``barrier:limit`` pairs (``NUMPROC="200:250"``); one number sets both; either
  side may be ``unlimited``.
* Memory in pages of 4 KiB unless suffixed: ``PHYSPAGES="0:512M"`` and
  ``PHYSPAGES="0:131072"`` are the same.  ``--ram 512M`` / ``--swap 1G`` are
  shorthands that set ``PHYSPAGES`` / ``SWAPPAGES`` to ``0:SIZE``.
* ``CPULIMIT`` is a percentage of one CPU (200 = two CPUs, 0 = no limit);
  ``CPUUNITS`` is a relative weight (default 1000).
"""

from __future__ import annotations

import argparse
import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from vzpkg.core.errors import UsageError
from vzpkg.core.shellconf import one_line
from vzpkg.runtime.ubctable import UBCS, Mode, Ubc, Unit, ubc_help

PAGE_SIZE = 4096
UNLIMITED = 9223372036854775807  # LONG_MAX: what OpenVZ writes for "unlimited"
_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": PAGE_SIZE}
# validators: used with fullmatch, never "^...$" ("$" also matches before a final "\n")
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)[ \t]*([KMGTP]?)(?:I?B)?", re.IGNORECASE)
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_CPU_RANGE = re.compile(r"(\d+)(?:-(\d+))?")
POSSIBLE_CPUS = Path("/sys/devices/system/cpu/possible")
MAX_CPUS = 8192     # CPU numbers a mask may name at most (the kernel's NR_CPUS is lower)


class ParamError(ValueError):
    """A value does not fit its parameter; the text says what was expected."""


class ParamKind(StrEnum):
    STRING = "string"
    INT = "int"
    BOOL = "bool"                    # yes | no
    CHOICE = "choice"
    LIST = "list"                    # space-separated items
    PERCENT = "percent"              # CPULIMIT: % of one CPU, 0 = unlimited
    BARRIER_LIMIT = "barrier:limit"  # counts, B[:L]
    PAGES = "pages"                  # B[:L] in 4 KiB pages, K/M/G/T suffixes accepted
    BYTES = "bytes"                  # B[:L] in bytes, K/M/G/T (and P: pages) suffixes
    SIZE = "size"                    # --ram/--swap: one size, stored as 0:pages
    CPUMASK = "cpumask"              # "all" or 0-3,6
    KBLOCKS = "kblocks"              # DISKSPACE: B[:L] in 1 KiB blocks, K/M/G/T accepted


class ListOp(StrEnum):
    SET = "set"  # the option's values replace the list
    ADD = "add"  # --ipadd: append to the current list
    DEL = "del"  # --ipdel: remove from it ("all" clears it)


@dataclass(frozen=True)
class Param:
    """One OpenVZ parameter: its CTID.conf key, its option and how it is checked."""

    key: str
    option: str
    kind: ParamKind
    live: bool
    help: str
    default: str | None = None
    metavar: str = "VALUE"
    controller: str | None = None  # cgroup controller that enforces it
    settable: bool = True          # offered by `vzctl set`
    primary: bool = True           # the canonical param for its key
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    op: ListOp = ListOp.SET
    check: Callable[[str], str] | None = None  # validates/normalizes one item
    cli_unit: str = ""             # a bare number on the command line counts in this unit

    @property
    def dest(self) -> str:
        return "param_" + self.option.replace("-", "_")


# -- item checks ---------------------------------------------------------------------

def _one_word(text: str) -> str:
    """*text*, or ValueError if it holds a blank or a control character (ipaddress
    takes anything after an IPv6 "%" as the scope, a line break too)."""
    if not text.isprintable() or " " in text:
        raise ValueError(text)
    return text


def check_ip(text: str) -> str:
    try:
        return str(ipaddress.ip_interface(_one_word(text))) if "/" in text else str(
            ipaddress.ip_address(_one_word(text)))
    except ValueError:
        raise ParamError(f"{text!r} is not an IPv4 or IPv6 address "
                         "(e.g. 10.0.0.2, 10.0.0.2/24, fd00::2)") from None


INHERIT = "inherit"   # NAMESERVER, SEARCHDOMAIN: the host's (its /etc/resolv.conf)


def check_nameserver(text: str) -> str:
    if text == INHERIT:
        return text
    try:
        return str(ipaddress.ip_address(_one_word(text)))
    except ValueError:
        raise ParamError(f"{text!r} is not an IP address of a name server") from None


def check_hostname(text: str) -> str:
    name = text.rstrip(".")
    if not name or len(name) > 253 or not all(_HOST_LABEL.fullmatch(p)
                                              for p in name.split(".")):
        raise ParamError(f"{text!r} is not a valid host name (letters, digits and '-', "
                         "dot-separated labels of at most 63 characters)")
    return name


def check_searchdomain(text: str) -> str:
    return text if text == INHERIT else check_hostname(text)


def check_rate(text: str) -> str:
    """IOLIMIT: bytes per second (K/M/G suffixes), stored as a number of bytes."""
    if text.strip().lower() == "unlimited":
        return "0"
    n = parse_size(text)
    if n >= UNLIMITED:
        raise ParamError(f"{text!r}: give a rate such as 10M (bytes per second), or 0")
    return str(n)


def check_name(text: str) -> str:
    if not _NAME_RE.fullmatch(text) or text.isdigit():
        raise ParamError(f"{text!r} is not a valid VE name (start with a letter or digit; "
                         "letters, digits, '_', '.', '-'; not all digits)")
    return text


# -- value parsing -------------------------------------------------------------------

def parse_size(text: str, *, bare_unit: int = 1) -> int:
    """Bytes in *text* (``512M``, ``1G``, ``10P`` pages); a bare number counts in
    *bare_unit*; ``unlimited`` is :data:`UNLIMITED`."""
    t = text.strip()
    if t.lower() == "unlimited" or t == str(UNLIMITED):
        return UNLIMITED
    m = _SIZE_RE.fullmatch(t)
    if not m:
        raise ParamError(f"{text!r} is not a size (e.g. 512M, 2G, 131072 pages, unlimited)")
    num, suf = m.group(1), m.group(2).upper()
    unit = _SUFFIX[suf] if suf else bare_unit
    if "." in num and not suf:
        raise ParamError(f"{text!r}: a fraction needs a unit suffix (e.g. 1.5G)")
    if len(num) > 30:
        return _bounded(text, UNLIMITED + 1, " bytes")
    return _bounded(text, int(float(num) * unit) if "." in num else int(num) * unit,
                    " bytes")


def parse_count(text: str) -> int:
    t = text.strip()
    if t.lower() == "unlimited":
        return UNLIMITED
    if not t.isdigit():
        raise ParamError(f"{text!r} is not a number or 'unlimited'")
    return _bounded(text, int(t) if len(t) < 30 else UNLIMITED + 1)


def _bounded(text: str, n: int, unit: str = "") -> int:
    """*n*, unless it is above :data:`UNLIMITED` (what the kernel can hold)."""
    if n > UNLIMITED:
        shown = text.strip() if len(text.strip()) <= 24 else text.strip()[:21] + "..."
        raise ParamError(f"{shown!r} is too large: the most is {UNLIMITED}{unit}; "
                         "use 'unlimited' for no limit")
    return n


def _pages(text: str) -> int:
    b = parse_size(text, bare_unit=PAGE_SIZE)
    return UNLIMITED if b == UNLIMITED else b // PAGE_SIZE


def _bytes(text: str) -> int:
    return parse_size(text, bare_unit=1)


def _kblocks(text: str) -> int:
    b = parse_size(text, bare_unit=1024)
    return UNLIMITED if b == UNLIMITED else b // 1024


def parse_barrier_limit(text: str, *, pages: bool = False, sizes: bool = False,
                        kblocks: bool = False) -> tuple[int, int]:
    """``B:L`` (or one value for both) as integers; pages if *pages*, bytes (with
    size suffixes) if *sizes*, 1 KiB blocks if *kblocks*, else counts."""
    one = _pages if pages else _bytes if sizes else _kblocks if kblocks else parse_count
    parts = text.strip().split(":")
    if len(parts) > 2 or not all(p.strip() for p in parts):
        raise ParamError(f"{text!r} is not 'barrier:limit' or one value")
    barrier = one(parts[0])
    limit = one(parts[1]) if len(parts) == 2 else barrier
    if barrier > limit:
        raise ParamError(f"{text!r}: the barrier must not be above the limit")
    return barrier, limit


def format_count(n: int) -> str:
    return "unlimited" if n >= UNLIMITED else str(n)


def format_kblocks(n: int) -> str:
    """1 KiB blocks in the largest whole unit: 16M, 1T."""
    for suf, shift in (("T", 30), ("G", 20), ("M", 10)):
        if n and n % (1 << shift) == 0:
            return f"{n >> shift}{suf}"
    return f"{n}K"


def possible_cpus() -> int:
    """How many CPU numbers this kernel can have: the highest number in
    ``/sys/devices/system/cpu/possible`` plus one, never more than :data:`MAX_CPUS`."""
    try:
        last = re.split(r"[,-]", POSSIBLE_CPUS.read_text().strip())[-1]
        return min(int(last) + 1, MAX_CPUS) if last.isdigit() and len(last) < 6 \
            else MAX_CPUS
    except OSError:
        return MAX_CPUS


def parse_cpumask(text: str, *, host: bool = False) -> tuple[int, ...] | None:
    """CPU numbers in ``0-3,6``; None for ``all``.

    Every number must be below :data:`MAX_CPUS`, or with *host* below
    :func:`possible_cpus`; checked before a range is expanded: ``0-30000000`` is an
    error, not 30 million CPUs."""
    t = text.strip()
    if t.lower() == "all":
        return None
    bound = possible_cpus() if host else MAX_CPUS
    limits = (f"the host's CPUs are 0-{bound - 1} ({POSSIBLE_CPUS})" if host
              else f"CPU numbers end at {MAX_CPUS - 1}")
    shown = repr(t if len(t) <= 40 else t[:37] + "...")
    ranges: list[tuple[int, int]] = []
    for part in t.split(","):
        m = _CPU_RANGE.fullmatch(part.strip())
        if not m:
            raise ParamError(f"{shown} is not a CPU list (e.g. 0, 0-3, 0,2-3 or all)")
        nums: list[int] = []
        for d in (g.lstrip("0") or "0" for g in m.groups() if g is not None):
            if len(d) > len(str(bound)) or int(d) >= bound:   # no int() of 5,000 digits
                d = d if len(d) <= 12 else d[:9] + "..."
                raise ParamError(f"{shown} names CPU {d}, but {limits}")
            nums.append(int(d))
        if nums[-1] < nums[0]:
            raise ParamError(f"{shown}: the range {part.strip()} runs backwards")
        ranges.append((nums[0], nums[-1]))
    cpus: list[int] = []
    for lo, hi in sorted(ranges):           # merged, so each CPU is listed once
        start = max(lo, cpus[-1] + 1) if cpus else lo
        cpus.extend(range(start, hi + 1))
    return tuple(cpus)


def format_cpumask(cpus: Iterable[int]) -> str:
    out: list[str] = []
    seq = sorted(set(cpus))
    i = 0
    while i < len(seq):
        j = i
        while j + 1 < len(seq) and seq[j + 1] == seq[j] + 1:
            j += 1
        out.append(str(seq[i]) if i == j else f"{seq[i]}-{seq[j]}")
        i = j + 1
    return ",".join(out)


def split_list(text: str) -> list[str]:
    return [x for x in re.split(r"[\s,]+", text.strip()) if x]


def normalize(p: Param, text: str, *, host: bool = False) -> str:
    """The CTID.conf form of *text* for *p*; :class:`ParamError` if it does not fit.
    With *host*, also what must fit this host (a new ``vzctl set`` value: the CPUs
    of CPUMASK); a stored CTID.conf is checked against the host at start."""
    # a line break is refused, not trimmed as blanks are: a CTID.conf value is one line
    if not one_line(text):
        raise ParamError(f"{text!r}: a value cannot span lines")
    k = p.kind
    if k in (ParamKind.INT, ParamKind.PERCENT):
        t = text.strip().removesuffix("%") if k is ParamKind.PERCENT else text.strip()
        if not t.isdigit():
            raise ParamError(f"{text!r} is not a whole number"
                             + (" (percent of one CPU; 0 = no limit)"
                                if k is ParamKind.PERCENT else ""))
        n = int(t)
        if (p.minimum is not None and n < p.minimum) or (p.maximum is not None
                                                          and n > p.maximum):
            raise ParamError(f"{n} is out of range {p.minimum}..{p.maximum}")
        return str(n)
    if k is ParamKind.BOOL:
        t = text.strip().lower()
        if t in ("yes", "on", "true", "1"):
            return "yes"
        if t in ("no", "off", "false", "0"):
            return "no"
        raise ParamError(f"{text!r} is not yes or no")
    if k is ParamKind.CHOICE:
        if text.strip() not in p.choices:
            raise ParamError(f"{text!r} is not one of: {', '.join(p.choices)}")
        return text.strip()
    if k is ParamKind.LIST:
        items = split_list(text)
        return " ".join(p.check(i) if p.check else i for i in items)
    if k in (ParamKind.BARRIER_LIMIT, ParamKind.PAGES, ParamKind.BYTES):
        b, lim = parse_barrier_limit(text, pages=k is ParamKind.PAGES,
                                     sizes=k is ParamKind.BYTES)
        for n in (b, lim):
            if n != UNLIMITED and ((p.minimum is not None and n < p.minimum)
                                   or (p.maximum is not None and n > p.maximum)):
                raise ParamError(f"{text!r}: {n} is out of range {p.minimum}..{p.maximum}")
        return f"{format_count(b)}:{format_count(lim)}"
    if k is ParamKind.KBLOCKS:
        b, lim = parse_barrier_limit(text, kblocks=True)
        for n in (b, lim):
            if n != UNLIMITED and ((p.minimum is not None and n < p.minimum)
                                   or (p.maximum is not None and n > p.maximum)):
                raise ParamError(f"{text!r}: {n}K is out of range "
                                 f"{format_kblocks(p.minimum or 0)}..."
                                 f"{format_kblocks(p.maximum or 0)}")
        return f"{format_count(b)}:{format_count(lim)}"
    if k is ParamKind.SIZE:
        size = parse_size(text)
        if size < (1 << 20) and size != 0:
            raise ParamError(f"{text!r} is {size} bytes; did you mean {text.strip()}M?")
        return f"0:{format_count(size if size == UNLIMITED else size // PAGE_SIZE)}"
    if k is ParamKind.CPUMASK:
        cpus = parse_cpumask(text, host=host)
        return "all" if cpus is None else format_cpumask(cpus)
    return p.check(text.strip()) if p.check else text


# -- the table -----------------------------------------------------------------------

_P = Param
PARAMS: tuple[Param, ...] = (
    _P("NAME", "name", ParamKind.STRING, False, "a name for the VE, usable instead of CTID",
       metavar="NAME", check=check_name),
    _P("DESCRIPTION", "description", ParamKind.STRING, False, "free-text description",
       metavar="TEXT"),
    _P("ONBOOT", "onboot", ParamKind.BOOL, False, "start the VE when the host boots",
       default="no", metavar="yes|no"),
    _P("BOOTORDER", "bootorder", ParamKind.INT, False,
       "start order at host boot (vzctl boot): higher first, VEs without one last",
       metavar="N", minimum=0, maximum=1 << 30),
    _P("OSTEMPLATE", "ostemplate", ParamKind.STRING, False,
       "the cache the VE was created from (e.g. debian-12-x86_64-minimal)",
       metavar="NAME", settable=False),
    _P("VE_USERNS", "userns", ParamKind.BOOL, False,
       "yes: the VE's root is an unprivileged host id range in a user namespace of "
       "its own (the default); no: host root with a reduced capability set (weaker, "
       "see docs/SECURITY.md)", default="yes", metavar="yes|no", settable=False),
    _P("VE_IDMAP", "idmap", ParamKind.STRING, False,
       "the host ids of the VE's root and users, BASE:COUNT (given at create from "
       "VE_IDMAP_POOL)", metavar="BASE:COUNT", settable=False),
    _P("VE_IDMAP_MODE", "idmap-mode", ParamKind.CHOICE, False,
       "how a user-namespaced VE's files get its ids: mount (an idmapped mount; files "
       "stay 0..65535 on disk), shift (owners shifted to VE_IDMAP on disk at create; "
       "plain layout), auto (vz.conf, vzctl create: mount where the file system takes "
       "one, else shift); CTID.conf records mount or shift",
       default="auto", metavar="auto|mount|shift", settable=False,
       choices=("auto", "mount", "shift")),
    _P("VE_IDMAP_POOL", "idmap-pool", ParamKind.STRING, False,
       "vz.conf: the host ids VE ranges are taken from, BASE:COUNT",
       default="104857600:1000013824", metavar="BASE:COUNT", settable=False),
    _P("VE_LAYOUT", "layout", ParamKind.CHOICE, False,
       "plain: unpack the cache; overlay: share a read-only unpacked copy",
       default="plain", metavar="plain|overlay", settable=False,
       choices=("plain", "overlay")),
    _P("HOSTNAME", "hostname", ParamKind.STRING, True, "the VE's host name",
       metavar="NAME", check=check_hostname),
    _P("IP_ADDRESS", "ipdel", ParamKind.LIST, True,
       "remove an address (repeatable), or 'all'", metavar="IP|all",
       op=ListOp.DEL, primary=False, check=check_ip),
    _P("IP_ADDRESS", "ipadd", ParamKind.LIST, True,
       "add an IPv4/IPv6 address (repeatable; ADDR or ADDR/PREFIX)",
       metavar="IP", op=ListOp.ADD, check=check_ip),
    _P("NAMESERVER", "nameserver", ParamKind.LIST, True,
       "DNS server for /etc/resolv.conf (repeatable; replaces the list); 'inherit': "
       "the host's", metavar="IP", check=check_nameserver),
    _P("SEARCHDOMAIN", "searchdomain", ParamKind.LIST, True,
       "DNS search domain (repeatable; replaces the list); 'inherit': the host's",
       metavar="DOMAIN", check=check_searchdomain),
    _P("STOP_TIMEOUT", "stop-timeout", ParamKind.INT, False,
       "seconds `vzctl stop` waits for init before killing the VE",
       metavar="SECONDS", minimum=0, maximum=86400),
    _P("CPUUNITS", "cpuunits", ParamKind.INT, True,
       "CPU weight relative to other VEs (default 1000)", default="1000",
       metavar="N", controller="cpu", minimum=8, maximum=500000),
    _P("CPULIMIT", "cpulimit", ParamKind.PERCENT, True,
       "CPU cap in percent of one CPU (200 = two CPUs; 0 = none)", default="0",
       metavar="PCT", controller="cpu", minimum=0, maximum=100 * 4096),
    _P("CPUS", "cpus", ParamKind.INT, True,
       "CPU cap in whole CPUs (0 = none); the lower of CPUS and CPULIMIT wins",
       default="0", metavar="N", controller="cpu", minimum=0, maximum=4096),
    _P("CPUMASK", "cpumask", ParamKind.CPUMASK, True,
       "host CPUs the VE may run on (e.g. 0-1,3 or all)", default="all",
       metavar="CPUS", controller="cpuset"),
    _P("PHYSPAGES", "physpages", ParamKind.PAGES, True,
       "RAM as barrier:limit in 4 KiB pages or sizes (0:512M); barrier = soft limit",
       metavar="B:L", controller="memory"),
    _P("PHYSPAGES", "ram", ParamKind.SIZE, True, "RAM limit (e.g. 512M, 2G)",
       metavar="SIZE", controller="memory", primary=False),
    _P("SWAPPAGES", "swappages", ParamKind.PAGES, True,
       "swap as barrier:limit in pages or sizes (0:1G)", metavar="B:L",
       controller="memory"),
    _P("SWAPPAGES", "swap", ParamKind.SIZE, True, "swap limit (e.g. 1G, 0 for none)",
       metavar="SIZE", controller="memory", primary=False),
    _P("IOPRIO", "ioprio", ParamKind.INT, True,
       "disk I/O priority, 0 (lowest) to 7 (highest); default 4", default="4",
       metavar="0-7", controller="io", minimum=0, maximum=7),
    _P("NUMPROC", "numproc", ParamKind.BARRIER_LIMIT, True,
       "processes and threads as barrier:limit (the limit is enforced)",
       metavar="B:L", controller="pids"),
    # disk quota (runtime/quota.py, disk*.py: a disk image per VE; not a cgroup parameter)
    _P("DISKSPACE", "diskspace", ParamKind.KBLOCKS, True,
       "disk space as soft:hard in 1 KiB blocks or sizes (10G:11G); the VE's files "
       "live on a disk image of the hard size (first given at create)",
       metavar="SOFT:HARD",
       minimum=16 << 10, maximum=1 << 40),
    _P("DISKINODES", "diskinodes", ParamKind.BARRIER_LIMIT, True,
       "files and directories as soft:hard (200000:220000); the hard limit is the "
       "disk image's inode count, set at create",
       metavar="SOFT:HARD", minimum=1024, maximum=(1 << 32) - 1),
    _P("QUOTATIME", "quotatime", ParamKind.INT, True,
       "grace period: seconds a VE may stay past its soft disk space limit",
       metavar="SECONDS", minimum=0, maximum=1 << 31),
    _P("QUOTAUGIDLIMIT", "quotaugidlimit", ParamKind.INT, True,
       "second-level quota: user and group ids with quotas inside the VE; only 0 "
       "(see docs/QUOTA.md)", metavar="N", minimum=0, maximum=1 << 31),
)


_UBC_KIND = {Unit.PAGES: ParamKind.PAGES, Unit.BYTES: ParamKind.BYTES,
             Unit.COUNT: ParamKind.BARRIER_LIMIT}


def _ubc_param(u: Ubc) -> Param:
    """The ``vzctl set --kmemsize B:L`` row of a beancounter (ubctable.UBCS); those
    a cgroup control enforces on either version name the memory controller, so a
    live set re-applies the VE's cgroup."""
    enforced = Mode.ENFORCED in (u.v1, u.v2)
    return Param(u.key, u.option, _UBC_KIND[u.unit], True, ubc_help(u), metavar="B:L",
                 controller="memory" if enforced else None)


PARAMS += (
    Param("IOLIMIT", "iolimit", ParamKind.STRING, True,
          "disk bandwidth of the VE in bytes per second (10M, 512K; a bare number is "
          "MB/s, as in OpenVZ; 0 = none); where the host cannot throttle, a warning",
          default="0", metavar="RATE", check=check_rate, cli_unit="M"),
    Param("IOPSLIMIT", "iopslimit", ParamKind.INT, True,
          "disk I/O operations per second of the VE (0 = none); where the host cannot "
          "throttle, a warning", default="0", metavar="N", minimum=0, maximum=1 << 40),
)
# every beancounter the table above does not already have (PHYSPAGES, SWAPPAGES, NUMPROC)
PARAMS += tuple(_ubc_param(u) for u in UBCS if u.key not in {p.key for p in PARAMS})
RESOURCE_KEYS: tuple[str, ...] = tuple(dict.fromkeys(p.key for p in PARAMS if p.controller))

_BY_OPTION = {p.option: p for p in PARAMS}
_BY_KEY = {p.key: p for p in PARAMS if p.primary}


def param_by_option(opt: str) -> Param:
    try:
        return _BY_OPTION[opt.lstrip("-")]
    except KeyError:
        raise UsageError(f"unknown parameter option --{opt.lstrip('-')}",
                         hint="known: " + ", ".join(sorted(_BY_OPTION))) from None


def param_by_key(key: str) -> Param:
    try:
        return _BY_KEY[key]
    except KeyError:
        raise UsageError(f"unknown parameter {key}",
                         hint="known: " + ", ".join(sorted(_BY_KEY))) from None


def find_param(key: str) -> Param | None:
    """The primary param for a CTID.conf key, or None for keys the table does not know."""
    return _BY_KEY.get(key)


def add_set_options(parser: argparse.ArgumentParser,
                    only: Iterable[str] | None = None) -> None:
    """Add ``--cpuunits N``, ``--ram SIZE``, ... to *parser*.

    By default the options of ``vzctl set``; *only* names the options to add
    instead (e.g. ``("hostname", "ipadd", "ostemplate", "layout")`` for create).
    """
    wanted = set(only) if only is not None else None
    group = parser.add_argument_group("VE parameters")
    for p in PARAMS:
        if (p.option not in wanted) if wanted is not None else not p.settable:
            continue
        repeat = p.kind is ParamKind.LIST
        group.add_argument(f"--{p.option}", dest=p.dest, metavar=p.metavar,
                           action="append" if repeat else "store", help=p.help)


def options_to_values(args: argparse.Namespace,
                      current: Callable[[str], str | None] | None = None) -> dict[str, str]:
    """Validated CTID.conf values (KEY -> value) for the options given on the command
    line.  *current* (e.g. ``VeConfig.get``) supplies the lists ``--ipadd`` and
    ``--ipdel`` edit; without it they edit an empty list."""
    out: dict[str, str] = {}
    given: dict[str, str] = {}
    for p in PARAMS:
        raw = getattr(args, p.dest, None)
        if raw is None:
            continue
        if p.key in given and p.op is ListOp.SET and given[p.key] != p.option:
            raise UsageError(f"--{given[p.key]} and --{p.option} both set {p.key}",
                             hint="give only one of them")
        given.setdefault(p.key, p.option)
        try:
            if p.op is ListOp.SET:
                text = " ".join(raw) if isinstance(raw, list) else str(raw)
                if p.cli_unit and text.strip().isdigit():
                    text = text.strip() + p.cli_unit
                out[p.key] = normalize(p, text, host=True)
                continue
            base = out.get(p.key)
            if base is None:
                base = (current(p.key) if current else None) or ""
            items = split_list(base)
            if p.op is ListOp.DEL:
                if "all" in raw:
                    items = []
                else:
                    drop = {_strip_prefix(check_ip(x)) for x in raw}
                    items = [i for i in items if _strip_prefix(i) not in drop]
            else:
                for x in raw:
                    ip = check_ip(x)
                    if _strip_prefix(ip) not in {_strip_prefix(i) for i in items}:
                        items.append(ip)
            out[p.key] = " ".join(items)
        except ParamError as exc:
            raise UsageError(f"--{p.option}: {exc}",
                             hint=f"--{p.option} {p.metavar}: {p.help}") from None
    return out


def _strip_prefix(ip: str) -> str:
    return ip.split("/", 1)[0]
