"""``vzlist``: list VEs and their state, OpenVZ style."""

from __future__ import annotations

import argparse
import fnmatch
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from vzpkg.cli.common import Parser, emit_json, run_console, run_main
from vzpkg.core.errors import ConfigError, UsageError, VeConfigError
from vzpkg.core.shellconf import ConfLine
from vzpkg.runtime import stats
from vzpkg.runtime.config import VeConfig
from vzpkg.runtime.paths import VzPaths, check_ctid
from vzpkg.runtime.ubc import Beancounter
from vzpkg.runtime.ubccount import counters as ve_counters
from vzpkg.runtime.ubctable import UBCS, UNIT_WORDS
from vzpkg.runtime.ve import Runtime, VeState, by_name

Value = int | float | str | bool | None
Row = dict[str, Value]


@dataclass(frozen=True)
class Field:
    name: str
    header: str
    kind: str        # int, float, str, bool, uptime
    group: str       # what must be read for it: conf, ubc, load, uptime
    help: str

    @property
    def numeric(self) -> bool:
        return self.kind in ("int", "float", "uptime")


# OpenVZ's beancounters (vzpkg.runtime.ubctable), in OpenVZ's order, with vzlist's
# column headers.
UBC_RESOURCES: dict[str, str] = {
    "kmemsize": "KMEMSIZE", "lockedpages": "LOCKEDP", "privvmpages": "PRIVVMP",
    "shmpages": "SHMP", "numproc": "NPROC", "physpages": "PHYSP", "vmguarpages": "VMGUARP",
    "oomguarpages": "OOMGUARP", "numtcpsock": "NTCPSOCK", "numflock": "NFLOCK",
    "numpty": "NPTY", "numsiginfo": "NSIGINFO", "tcpsndbuf": "TCPSNDB",
    "tcprcvbuf": "TCPRCVB", "othersockbuf": "OTHSOCKB", "dgramrcvbuf": "DGRAMRB",
    "numothersock": "NOTHSOCK", "dcachesize": "DCACHESZ", "numfile": "NFILE",
    "numiptent": "NIPTENT", "swappages": "SWAPP",
}
UBC_PARTS = (("", "", "held now"), (".m", ".M", "maximum held"), (".b", ".B", "barrier"),
             (".l", ".L", "limit"), (".f", ".F", "failure count (refused by the limit)"))
UBC_UNITS = {u.resource: UNIT_WORDS[u.unit] for u in UBCS}

LAVERAGE_HELP = ("the VE's tasks running or runnable (R) or in uninterruptible sleep (D) "
                 "now: a snapshot, not a decayed 1/5/15-minute load average (the kernel "
                 "keeps none per VE)")


def _fields() -> dict[str, Field]:
    f = [Field("ctid", "CTID", "int", "conf", "the VE's id"),
         Field("veid", "VEID", "int", "conf", "the VE's id (OpenVZ's older name)"),
         Field("smart_name", "SMARTNAME", "str", "conf", "NAME if set, else the CTID"),
         Field("name", "NAME", "str", "conf", "NAME (vzctl set --name)"),
         Field("hostname", "HOSTNAME", "str", "conf", "HOSTNAME"),
         Field("description", "DESCRIPTION", "str", "conf", "DESCRIPTION"),
         Field("ostemplate", "OSTEMPLATE", "str", "conf", "the cache it was created from"),
         Field("ip", "IP_ADDR", "str", "conf", "IP_ADDRESS (space-separated)"),
         Field("nameserver", "NAMESERVER", "str", "conf", "NAMESERVER"),
         Field("searchdomain", "SEARCHDOMAIN", "str", "conf", "SEARCHDOMAIN"),
         Field("status", "STATUS", "str", "conf", "running, mounted or stopped"),
         Field("layout", "LAYOUT", "str", "conf", "plain or overlay"),
         Field("private", "PRIVATE", "str", "conf", "the VE's private area"),
         Field("root", "ROOT", "str", "conf", "where its root is mounted"),
         Field("pid", "INITPID", "int", "conf", "the host pid of its init"),
         Field("onboot", "ONBOOT", "bool", "conf", "started by vzctl boot"),
         Field("bootorder", "BOOTORDER", "int", "conf", "BOOTORDER (higher first)"),
         Field("cpuunits", "CPUUNITS", "int", "conf", "CPUUNITS (CTID.conf, else vz.conf)"),
         Field("cpulimit", "CPULIM", "int", "conf", "CPULIMIT in % of one CPU"),
         Field("cpus", "CPUS", "int", "conf", "CPUS"),
         Field("ioprio", "IOP", "int", "conf", "IOPRIO"),
         Field("conf_error", "CONF_ERROR", "str", "conf",
               "why vzctl cannot use the VE's CTID.conf (a bad value, VE_LAYOUT simfs or "
               "ploop); - when it can")]
    for res, hdr in UBC_RESOURCES.items():
        for suffix, hsuffix, what in UBC_PARTS:
            unit = "" if suffix == ".f" else f", {UBC_UNITS[res]}"
            f.append(Field(res + suffix, hdr + hsuffix, "int", "ubc",
                           f"beancounter {res}: {what}{unit}"))
    f += [Field("laverage", "LAVERAGE", "int", "load", LAVERAGE_HELP),
          Field("uptime", "UPTIME", "uptime", "uptime",
                "time since its init started (JSON: seconds)")]
    return {x.name: x for x in [*f, *DISK_FIELDS]}


# disk quota (vzpkg.runtime.quota): usage from the VE's disk image, limits from CTID.conf
DISK_FIELDS = [Field(name + suffix, hdr + hsuffix, "int", "disk" if not suffix else "conf",
                     f"{name}: {what} ({unit})")
               for name, hdr, unit in (("diskspace", "DQBLOCKS", "1 KiB blocks"),
                                       ("diskinodes", "DQINODES", "inodes"))
               for suffix, hsuffix, what in (("", "", "used"), (".s", ".S", "soft limit"),
                                             (".h", ".H", "hard limit"))]


FIELDS = _fields()
DEFAULT_FIELDS = "ctid,numproc,status,ip,hostname"

EPILOG = """\
examples:
  vzlist                      running VEs: CTID NPROC STATUS IP_ADDR HOSTNAME
  vzlist -a                   all VEs, stopped ones too
  vzlist -S                   stopped VEs only
  vzlist -n                   the default columns and the VE's NAME
  vzlist -o ctid,hostname,ostemplate,layout -H
  vzlist -o ctid,uptime,laverage,numproc -s -uptime
                              the longest-running VE first (-s FIELD: ascending)
  vzlist -a -o ctid,physpages,physpages.l,physpages.f -s -physpages
                              memory held (4 KiB pages) against the limit, biggest first
  vzlist -a -h 'web*'         VEs whose hostname matches a shell pattern
  vzlist -a -N db1 -d '*nightly*'
                              by name, and by description (shell patterns)
  vzlist -j 101               JSON: every field of VE 101, numbers as numbers
  vzlist -1                   CTIDs only, for scripts
  vzlist -L                   every field with its header and meaning

The values of a running VE are what it has now: its CTID.conf with what a
vzctl set without --save changed since it started.  A VE whose CTID.conf vzctl
cannot use (a bad value; VE_LAYOUT="simfs" or "ploop") is listed with the values
its file gives and a warning on stderr naming it; the others are listed as
always, and vzlist exits 0 (conf_error holds the reason, for -j).

Values only a running VE has (INITPID, uptime, laverage, and the held, maxheld
and failcnt of beancounters) are - for a stopped VE (null in JSON); its
barriers and limits come from CTID.conf.  Sorting puts - last either way.
laverage is the number of the VE's tasks running or runnable (R) or in
uninterruptible sleep (D) at this moment: a snapshot, not OpenVZ's decayed
1/5/15-minute load average (a mainline kernel keeps none per VE).

fields: """


# -- rows ---------------------------------------------------------------------------

def _int_or_text(v: str | None) -> int | str | None:
    if v is None or v.strip() == "":
        return None
    t = v.strip().removesuffix("%")
    return int(t) if t.isdigit() else v


class _Conf:
    """CTID.conf over vz.conf, as the VE is started with."""

    def __init__(self, cfg: VeConfig, base: VeConfig) -> None:
        self.cfg, self.base = cfg, base

    def get(self, key: str) -> str | None:
        v = self.cfg.get(key)
        return self.base.get(key) if v is None else v

    def barrier_limit(self, key: str) -> tuple[int, int] | None:
        try:
            if self.cfg.get(key) is not None:
                return self.cfg.barrier_limit(key)
            if self.base.get(key) is not None:
                return self.base.barrier_limit(key)
        except ConfigError:
            return None
        return None


def make_row(rt: Runtime, st: VeState, cfg: VeConfig, base: VeConfig,
             groups: set[str], problem: str | None = None) -> Row:
    """The values of one VE (*cfg*: what it has now); only the *groups* of fields
    asked for are read from the kernel (beancounters, task states, init's start time).
    *problem*: why its CTID.conf cannot be used (*cfg* is then read leniently)."""
    eff = _Conf(cfg, base)
    name = cfg.get("NAME") or None
    row: Row = {
        "ctid": st.ctid, "veid": st.ctid, "smart_name": name or str(st.ctid), "name": name,
        "hostname": cfg.get("HOSTNAME") or None,
        "description": cfg.get("DESCRIPTION") or None,
        "ostemplate": cfg.get("OSTEMPLATE") or None,
        "ip": cfg.get("IP_ADDRESS") or None,
        "nameserver": cfg.get("NAMESERVER") or None,
        "searchdomain": cfg.get("SEARCHDOMAIN") or None,
        "status": str(st.status), "layout": cfg.get("VE_LAYOUT") or "plain",
        "private": str(rt.paths.private(st.ctid)), "root": str(rt.paths.ve_root(st.ctid)),
        "pid": st.pid, "onboot": (cfg.get("ONBOOT") or "no").strip().lower() == "yes",
        "bootorder": _int_or_text(cfg.get("BOOTORDER")),
        "cpuunits": _int_or_text(eff.get("CPUUNITS")),
        "cpulimit": _int_or_text(eff.get("CPULIMIT")),
        "cpus": _int_or_text(eff.get("CPUS")), "ioprio": _int_or_text(eff.get("IOPRIO")),
        "laverage": None, "uptime": None, "conf_error": problem,
    }
    counters: dict[str, Beancounter] = {}
    procs: list[int] | None = None
    if st.running and "ubc" in groups:
        live = rt.paths.livefile(st.ctid)         # what live sets changed
        try:
            now = cfg.with_values(VeConfig.load(live).items()) if live.is_file() else cfg
            counters = {bc.resource: bc for bc in ve_counters(
                rt.cgroups, str(st.ctid), now, st.pid, rt.paths.ubcfile(st.ctid))}
        except ConfigError:     # a barrier of a broken CTID.conf: the kernel's values only
            counters = {bc.resource: bc for bc in rt.cgroups.counters(str(st.ctid))}
    for res in UBC_RESOURCES:
        bc = counters.get(res)
        if bc is not None:
            row.update({res: bc.held if bc.counted else None,
                        f"{res}.m": bc.maxheld if bc.counted else None, f"{res}.b": bc.barrier,
                        f"{res}.l": bc.limit, f"{res}.f": bc.failcnt})
            continue
        bl = eff.barrier_limit(res.upper())
        row.update({res: None, f"{res}.m": None, f"{res}.f": None,
                    f"{res}.b": bl[0] if bl else None, f"{res}.l": bl[1] if bl else None})
    if st.running and "ubc" in groups and "numproc" not in counters:
        procs = rt.cgroups.procs(str(st.ctid))     # no pids controller: count them
        row["numproc"] = len(procs)
    if st.running and st.pid is not None:
        if "load" in groups:
            row["laverage"] = stats.runnable_tasks(
                procs if procs is not None else rt.cgroups.procs(str(st.ctid)))
        if "uptime" in groups:
            up = stats.process_uptime(st.pid)
            row["uptime"] = None if up is None else round(up, 3)
    row.update(_disk_row(rt, st.ctid, eff, "disk" in groups))
    return row


def _disk_row(rt: Runtime, ctid: int, eff: _Conf, usage: bool) -> Row:
    """diskspace and diskinodes: used (with *usage*, from the VE's mounted disk
    image; - for a VE without one, or stopped: vzquota stat reads that), soft and
    hard limits (- for unlimited)."""
    from vzpkg.runtime import diskusage, quota
    lim = quota.of_config(eff.get)
    used = diskusage.usage(rt.paths, ctid, mount=False) if usage else None
    def num(n: int) -> int | None:
        return None if n >= quota.UNLIMITED else n
    return {"diskspace": used.space_used if used else None,
            "diskspace.s": num(lim.space_soft), "diskspace.h": num(lim.space_hard),
            "diskinodes": used.inodes_used if used else None,
            "diskinodes.s": num(lim.inodes_soft), "diskinodes.h": num(lim.inodes_hard)}


def resolve(paths: VzPaths, text: str) -> int:
    """A CTID given as a number or as the VE's NAME."""
    if text.isdigit():
        return check_ctid(text)
    found = by_name(paths, text)
    if found is None:
        raise UsageError(f"{text!r} is neither a CTID nor the name of a VE",
                         hint="CTIDs are numbers such as 101; a name is given with "
                              "vzctl set CTID --name NAME --save")
    return found


def _lenient(rt: Runtime, ctid: int) -> VeConfig:
    """VE *ctid*'s CTID.conf as far as its lines parse, values unchecked (for listing
    a VE whose configuration vzctl cannot use)."""
    from vzpkg.runtime.config import lenient_values
    conf = rt.paths.conf(ctid)
    return VeConfig(tuple(ConfLine(f"{k}={v}", k, v)
                          for k, v in lenient_values(conf).items()), conf)


def ve_config(rt: Runtime, ctid: int, warn: Callable[[str], None]) -> tuple[VeConfig,
                                                                          str | None]:
    """What VE *ctid* has now (CTID.conf, and a running VE's live changes), and why
    its CTID.conf cannot be used, if so: then the lenient reading, and *warn* is told."""
    from vzpkg.runtime.vset import live_config
    try:
        return live_config(rt, ctid), None
    except VeConfigError as exc:
        warn(f"{exc.message}; listed with what its CTID.conf says")
        return _lenient(rt, ctid), exc.message


def _warn(text: str) -> None:
    print(f"vzlist: warning: {text}", file=sys.stderr)


def collect(rt: Runtime, args: argparse.Namespace, needed: Iterable[str],
            warn: Callable[[str], None] = _warn) -> list[Row]:
    """The rows args select (CTIDs, -a/-S, -h/-N/-d), in CTID order.  A VE whose
    CTID.conf cannot be used is listed from what its file gives, and *warn* names it."""
    groups = {FIELDS[f].group for f in needed}
    ids = sorted({resolve(rt.paths, c) for c in args.ctid}) or rt.ctids()
    base = rt.global_conf()
    rows = []
    for ctid in ids:
        st = rt.state(ctid)
        if not st.exists:
            if args.ctid:
                raise UsageError(f"VE {ctid} does not exist")
            continue
        if args.stopped:
            if st.running:
                continue
        elif not (args.ctid or args.all) and not st.running:
            continue
        cfg, problem = ve_config(rt, ctid, warn)
        if not (matches(cfg.get("HOSTNAME"), args.hostname)
                and matches(cfg.get("NAME"), args.name_filter)
                and matches(cfg.get("DESCRIPTION"), args.description)):
            continue
        rows.append(make_row(rt, st, cfg, base, groups, problem))
    return rows


def matches(value: str | None, pattern: str | None) -> bool:
    """OpenVZ's filters: a shell pattern (fnmatch); a VE without the value never
    matches a pattern."""
    if pattern is None:
        return True
    if not value:
        return False
    return fnmatch.fnmatchcase(value, pattern)


# -- sorting and output ---------------------------------------------------------------

def parse_sort(spec: str) -> tuple[str, bool]:
    """``FIELD`` or ``-FIELD`` -> (field, descending)."""
    name = spec[1:] if spec.startswith("-") else spec
    if name not in FIELDS:
        raise UsageError(f"unknown sort field {name!r} in -s {spec}",
                         hint="fields: " + ",".join(FIELDS) + " (vzlist -L explains them)")
    return name, spec.startswith("-")


def _key(v: Value) -> tuple[int, float, str]:
    if isinstance(v, bool):
        return (0, float(v), "")
    if isinstance(v, int | float):
        return (0, float(v), "")
    return (1, 0.0, str(v))


def sort_rows(rows: list[Row], field: str, descending: bool = False) -> list[Row]:
    """Stable sort on *field*: numbers by value, text by text; rows without a value
    (shown as -) last in either direction."""
    have = [r for r in rows if r.get(field) is not None]
    missing = [r for r in rows if r.get(field) is None]
    have.sort(key=lambda r: _key(r[field]), reverse=descending)
    return have + missing


def fmt_uptime(seconds: float) -> str:
    """OpenVZ's uptime column: ``DDDdHHh:MMm:SSs``."""
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    mins, secs = divmod(s, 60)
    return f"{days:03d}d{hours:02d}h:{mins:02d}m:{secs:02d}s"


def cell(field: str, v: Value) -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if FIELDS[field].kind == "uptime" and isinstance(v, int | float):
        return fmt_uptime(v)
    return str(v)


def table(rows: Sequence[Row], fields: Sequence[str], header: bool = True) -> list[str]:
    lines = [[cell(f, r[f]) for f in fields] for r in rows]
    if header:
        lines.insert(0, [FIELDS[f].header for f in fields])
    if not lines:
        return []
    widths = [max(len(line[i]) for line in lines) for i in range(len(fields))]
    out = []
    for line in lines:
        cells = [c.rjust(w) if FIELDS[f].numeric else c.ljust(w)
                 for c, w, f in zip(line, widths, fields, strict=True)]
        out.append(" ".join(cells).rstrip())
    return out


def field_list() -> list[str]:
    """``vzlist -L``: each field, its header and what it is."""
    wn = max(len(n) for n in FIELDS)
    wh = max(len(f.header) for f in FIELDS.values())
    return [f"{n:<{wn}} {f.header:<{wh}} {f.help}" for n, f in FIELDS.items()]


def parse_fields(text: str) -> list[str]:
    fields = [f.strip() for f in text.split(",") if f.strip()]
    bad = [f for f in fields if f not in FIELDS]
    if bad or not fields:
        raise UsageError(f"unknown field(s) {', '.join(bad) or repr(text)} in -o",
                         hint="known fields: " + ",".join(FIELDS) + " (vzlist -L)")
    return fields


def output_fields(args: argparse.Namespace) -> list[str]:
    """-1: the CTID; -o as given; -j: every field; else the default columns.
    -n adds NAME (after the CTID) when it is not there yet."""
    if args.only_ids:
        return ["ctid"]
    if args.output is not None:
        fields = parse_fields(args.output)
    elif args.json:
        fields = list(FIELDS)
    else:
        fields = DEFAULT_FIELDS.split(",")
    if args.with_name and "name" not in fields:
        at = next((i + 1 for i, f in enumerate(fields) if f in ("ctid", "veid")), len(fields))
        fields.insert(at, "name")
    return fields


def cmd_list(args: argparse.Namespace) -> int:
    return run_list(args, lambda: Runtime(VzPaths.from_env()))


def run_list(args: argparse.Namespace, runtime: Callable[[], Runtime]) -> int:
    """What vzlist prints for *args*, on the VEs of ``runtime()``."""
    if args.list_fields:
        print("\n".join(field_list()))
        return 0
    fields = output_fields(args)
    sort = parse_sort(args.sort) if args.sort else None
    rt = runtime()
    rows = collect(rt, args, [*fields, *([sort[0]] if sort else [])])
    if sort:
        rows = sort_rows(rows, *sort)
    if args.json:
        emit_json([{f: r[f] for f in fields} for r in rows])
    elif args.only_ids:
        for r in rows:
            print(r["ctid"])
    else:
        lines = table(rows, fields, header=not args.no_header)
        if lines:
            print("\n".join(lines))
    return 0


# -- the command line -------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="vzlist", description=__doc__, add_help=False,
               epilog=EPILOG + ",".join(FIELDS),
               usage="vzlist [-a | -S] [-n] [-H] [-o FIELD[,FIELD...] | -1] [-s [-]FIELD]\n"
                     "              [-h PATTERN] [-N PATTERN] [-d PATTERN] [-j] "
                     "[CTID|NAME ...]\n       vzlist -L",
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--help", action="help", help="show this help and exit")
    p.add_argument("-a", "--all", action="store_true", help="running and stopped VEs")
    p.add_argument("-S", "--stopped", action="store_true", help="stopped VEs only")
    p.add_argument("-o", "--output", default=None, metavar="FIELDS",
                   help=f"comma-separated fields (default {DEFAULT_FIELDS}; see -L)")
    p.add_argument("-s", "--sort", default=None, metavar="[-]FIELD",
                   help="sort by FIELD, ascending; -FIELD: descending ('-' values last)")
    p.add_argument("-H", "--no-header", action="store_true", help="no header line")
    p.add_argument("-j", "--json", action="store_true",
                   help="JSON: a list of objects, every field unless -o names some")
    p.add_argument("-1", "--only-ids", action="store_true",
                   help="print CTIDs only (as -H -o ctid)")
    p.add_argument("-n", "--name", dest="with_name", action="store_true",
                   help="add the NAME column")
    p.add_argument("-h", "--hostname", default=None, metavar="PATTERN",
                   help="only VEs whose hostname matches the shell PATTERN")
    p.add_argument("-N", "--name_filter", "--name-filter", dest="name_filter", default=None,
                   metavar="PATTERN", help="only VEs whose NAME matches the shell PATTERN")
    p.add_argument("-d", "--description", default=None, metavar="PATTERN",
                   help="only VEs whose description matches the shell PATTERN")
    p.add_argument("-L", "--list", dest="list_fields", action="store_true",
                   help="list the fields, their headers and meanings")
    p.add_argument("ctid", nargs="*", metavar="CTID", help="only these VEs (CTID or NAME)")
    p.set_defaults(func=cmd_list)
    return p


def _join_sort(argv: Sequence[str]) -> list[str]:
    """``-s -FIELD`` as ``--sort=-FIELD``: argparse would take -FIELD for an option."""
    out: list[str] = []
    it = iter(argv)
    for a in it:
        if a == "--":
            out += [a, *it]
            break
        if a in ("-s", "--sort"):
            nxt = next(it, None)
            if nxt is not None and nxt.startswith("-") and nxt != "--":
                out.append(f"--sort={nxt}")
                continue
            out.append(a)
            if nxt is not None:
                out.append(nxt)
            continue
        out.append(a)
    return out


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    return build_parser().parse_args(_join_sort(argv))


def main(argv: Sequence[str] | None = None) -> int:
    args = _join_sort(sys.argv[1:] if argv is None else argv)
    return run_main("vzlist", build_parser, args)


def entry() -> NoReturn:
    """The ``vzlist`` program: main(), then a fast exit (see exit_fast)."""
    run_console(main)


if __name__ == "__main__":
    entry()
