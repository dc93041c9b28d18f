"""``vzlist``: list VEs and their state, OpenVZ style."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import NoReturn

from vzpkg.cli.common import Parser, emit_json, run_console, run_main
from vzpkg.core.errors import UsageError
from vzpkg.runtime.paths import VzPaths, check_ctid
from vzpkg.runtime.ve import Runtime, VeState

EPILOG = """\
examples:
  vzlist                      running VEs: CTID NPROC STATUS IP_ADDR HOSTNAME
  vzlist -a                   all VEs, stopped ones too
  vzlist -S                   stopped VEs only
  vzlist -o ctid,hostname,ostemplate,layout -H
  vzlist -j 101               JSON, one object per VE

fields: """


def _row(rt: Runtime, st: VeState) -> dict[str, object]:
    cfg = rt.config(st.ctid)
    numproc = len(rt.cgroups.procs(str(st.ctid))) if st.running else 0
    return {
        "ctid": st.ctid, "veid": st.ctid, "hostname": cfg.get("HOSTNAME") or "-",
        "ip": cfg.get("IP_ADDRESS") or "-", "status": str(st.status),
        "numproc": numproc, "ostemplate": cfg.get("OSTEMPLATE") or "-",
        "layout": cfg.get("VE_LAYOUT") or "plain", "private": str(rt.paths.private(st.ctid)),
        "root": str(rt.paths.ve_root(st.ctid)), "pid": st.pid or "-",
        "name": cfg.get("NAME") or "-", "onboot": cfg.get("ONBOOT") or "no",
        "cpuunits": cfg.get("CPUUNITS") or "-", "numproc.l": cfg.get("NUMPROC") or "-",
        "physpages": cfg.get("PHYSPAGES") or "-",
    }


HEADERS: dict[str, str] = {
    "ctid": "CTID", "veid": "VEID", "hostname": "HOSTNAME", "ip": "IP_ADDR",
    "status": "STATUS", "numproc": "NPROC", "ostemplate": "OSTEMPLATE", "layout": "LAYOUT",
    "private": "PRIVATE", "root": "ROOT", "pid": "INITPID", "name": "NAME",
    "onboot": "ONBOOT", "cpuunits": "CPUUNITS", "numproc.l": "NUMPROC",
    "physpages": "PHYSPAGES",
}
DEFAULT_FIELDS = "ctid,numproc,status,ip,hostname"
RIGHT = {"ctid", "veid", "numproc", "pid"}


def cmd_list(args: argparse.Namespace) -> int:
    rt = Runtime(VzPaths.from_env())
    fields = [f.strip() for f in args.output.split(",") if f.strip()]
    bad = [f for f in fields if f not in HEADERS]
    if bad:
        raise UsageError(f"unknown field(s) {', '.join(bad)} in -o",
                         hint="known fields: " + ",".join(HEADERS))
    ids = [check_ctid(c) for c in args.ctid] or rt.ctids()
    keep: Callable[[VeState], bool]
    if args.ctid or args.all:
        keep = lambda s: True  # noqa: E731
    elif args.stopped:
        keep = lambda s: not s.running  # noqa: E731
    else:
        keep = lambda s: s.running  # noqa: E731
    rows = []
    for ctid in ids:
        st = rt.state(ctid)
        if not st.exists:
            if args.ctid:
                raise UsageError(f"VE {ctid} does not exist")
            continue
        if keep(st):
            rows.append(_row(rt, st))
    if args.json:
        emit_json([{f: r[f] for f in fields} for r in rows])
        return 0
    if args.only_ids:
        for r in rows:
            print(r["ctid"])
        return 0
    table = [[str(r[f]) for f in fields] for r in rows]
    if not args.no_header:
        table.insert(0, [HEADERS[f] for f in fields])
    widths = [max(len(row[i]) for row in table) for i in range(len(fields))] if table else []
    for row in table:
        cells = [c.rjust(w) if f in RIGHT else c.ljust(w)
                 for c, w, f in zip(row, widths, fields, strict=True)]
        print(" ".join(cells).rstrip())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="vzlist", description=__doc__, epilog=EPILOG + ",".join(HEADERS),
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-a", "--all", action="store_true", help="running and stopped VEs")
    p.add_argument("-S", "--stopped", action="store_true", help="stopped VEs only")
    p.add_argument("-o", "--output", default=DEFAULT_FIELDS, metavar="FIELDS",
                   help=f"comma-separated fields (default {DEFAULT_FIELDS})")
    p.add_argument("-H", "--no-header", action="store_true", help="no header line")
    p.add_argument("-j", "--json", action="store_true", help="JSON output")
    p.add_argument("-1", "--only-ids", action="store_true", help="print CTIDs only")
    p.add_argument("ctid", nargs="*", metavar="CTID", help="only these VEs")
    p.set_defaults(func=cmd_list)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("vzlist", build_parser, argv)


def entry() -> NoReturn:
    """The ``vzlist`` program: main(), then a fast exit (see exit_fast)."""
    run_console(main)


if __name__ == "__main__":
    entry()
