"""vzubc: show a VE's user beancounters (OpenVZ's /proc/user_beancounters view)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from vzpkg.cli.common import Parser, emit_json, run_console, run_main
from vzpkg.core.errors import UsageError, VeError, VzError
from vzpkg.runtime import state
from vzpkg.runtime.cgroups import Cgroups, check_ctid, detect
from vzpkg.runtime.config import VeConfig, atomic_write, lenient_values, ve_conf_path
from vzpkg.runtime.paths import VzPaths
from vzpkg.runtime.ubc import Beancounter, format_human, format_table, to_json
from vzpkg.runtime.ubccount import counters as ve_counters
from vzpkg.runtime.ubctable import UBCS

EPILOG = """\
Columns (OpenVZ's): HELD = in use now, MAXH = the most used, each with its share
of the barrier (Bar%) and limit (Lim%); BAR and LIM as configured ("-": none);
FAIL = failcnt, how often the limit refused the VE (for oomguarpages: how many
processes the OOM killer ended).  Sizes in K/M/G (pages and bytes alike); --raw prints
/proc/user_beancounters' layout in OpenVZ's units (4 KiB pages, bytes, counts).
Which beancounters are enforced, accounted or refused on this host: README.md,
"Beancounters".  A "-" in HELD: this host has no counter for it.

examples:
  vzubc 101            beancounters of VE 101 (or its NAME)
  vzubc                all running VEs
  vzubc -q             only resources that failed or are near a limit (90%)
  vzubc -r 101         failures since the last `vzubc -r`
  vzubc -w 2 -c        refresh every 2 seconds, in colour (Ctrl-C stops)
  vzubc -j 101         JSON, for scripts

environment:
  VZ_ROOT   where the VEs' configurations live (default /vz); the barriers the
            kernel does not keep come from VZ_ROOT/etc/vz/conf/CTID.conf
"""


def build() -> argparse.ArgumentParser:
    p = Parser(prog="vzubc", description=__doc__, epilog=EPILOG,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ctids", nargs="*", metavar="CTID|NAME",
                   help="VEs to show (default: every running VE)")
    p.add_argument("-j", "--json", action="store_true", help="print JSON")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="show only resources with failures (with -r: new ones) or held "
                        "at 90%% or more of the barrier or limit")
    p.add_argument("-r", "--relative", action="store_true",
                   help="FAIL counts the failures since the last `vzubc -r` (kept in "
                        "--store)")
    p.add_argument("--store", type=Path, metavar="FILE",
                   help="where -r keeps the last counts (default VZ_ROOT/run/vzubc.json)")
    p.add_argument("-c", "--color", "--colour", dest="colour", action="store_true",
                   help="red: failures; yellow: near the barrier or limit")
    p.add_argument("-w", "--watch", type=float, nargs="?", const=2.0, metavar="SECONDS",
                   help="redraw every SECONDS (default 2) until interrupted")
    p.add_argument("--iterations", type=int, metavar="N",
                   help="with -w: stop after N screens")
    p.add_argument("--raw", action="store_true",
                   help="/proc/user_beancounters' layout and units")
    p.add_argument("--cgroup-root", type=Path, default=Path("/sys/fs/cgroup"),
                   metavar="PATH", help="where cgroups are mounted (default %(default)s)")
    p.set_defaults(func=run)
    return p


def _config(paths: VzPaths, ctid: str) -> VeConfig | None:
    """CTID.conf with what live sets changed since the VE started (CTID.live)."""
    path = ve_conf_path(paths.root, ctid)
    if not path.is_file():
        return None
    cfg = VeConfig.load(path)
    live = paths.livefile(int(ctid)) if ctid.isdigit() else None
    if live is not None and live.is_file():
        cfg = cfg.with_values(VeConfig.load(live).items())
    return cfg


def _ctid_of(paths: VzPaths, text: str) -> str:
    """A CTID, or the CTID of the VE named *text*."""
    if text.isdigit() or not text:
        return text
    from vzpkg.runtime.ve import by_name  # (only for names)
    found = by_name(paths, text)
    return str(found) if found is not None else text


def collect(cg: Cgroups, paths: VzPaths, ctids: Sequence[str]
            ) -> tuple[dict[str, list[Beancounter]], list[VzError]]:
    vz_root = paths.root
    out: dict[str, list[Beancounter]] = {}
    errors: list[VzError] = []
    for text in ctids:
        try:
            ctid = check_ctid(_ctid_of(paths, text))
            cfg = _config(paths, ctid)
            if not cg.exists(ctid):
                if cfg is None:
                    raise VeError(f"VE {ctid} does not exist "
                                  f"(no {ve_conf_path(vz_root, ctid)}, no cgroup)",
                                  hint="check the CTID with `vzlist -a`")
                raise VeError(f"VE {ctid} is not running: it has no cgroup",
                              hint=f"start it with `vzctl start {ctid}`")
            pid = state.running_pid(paths.pidfile(int(ctid))) if ctid.isdigit() else None
            out[ctid] = ve_counters(cg, ctid, cfg, pid,
                                    paths.ubcfile(int(ctid)) if pid is not None else None)
        except VzError as exc:
            errors.append(exc)
    return out, errors


def _names(vz_root: Path, ctids: Sequence[str]) -> dict[str, str]:
    out = {}
    for ctid in ctids:
        name = lenient_values(ve_conf_path(vz_root, ctid)).get("NAME")
        if name:
            out[ctid] = name
    return out


def _relative(store: Path, data: dict[str, list[Beancounter]]
              ) -> dict[str, dict[str, int]]:
    """The failures since the counts *store* holds; *store* then holds these."""
    try:
        last = json.loads(store.read_text())
    except (OSError, ValueError):
        last = {}
    last = last if isinstance(last, dict) else {}
    delta: dict[str, dict[str, int]] = {}
    for ctid, rows in data.items():
        got = last.get(ctid)
        before: dict[str, object] = got if isinstance(got, dict) else {}
        delta[ctid] = {bc.resource: max(0, bc.failcnt - _int(before.get(bc.resource)))
                       for bc in rows}
        last[ctid] = {bc.resource: bc.failcnt for bc in rows}
    store.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(store, json.dumps(last, sort_keys=True) + "\n", mode=0o600)
    return delta


def _int(v: object) -> int:
    return v if isinstance(v, int) else 0


def _screen(args: argparse.Namespace, cg: Cgroups, paths: VzPaths) -> int:
    ctids = list(args.ctids) or cg.list_ctids()
    data, errors = collect(cg, paths, ctids)
    if args.json:
        emit_json(to_json(data))
    elif args.raw:
        sys.stdout.write(format_table(data, only_failed=args.quiet))
    elif data:
        delta = _relative(args.store or paths.run_dir / "vzubc.json", data) \
            if args.relative else None
        units = {u.resource: str(u.unit) for u in UBCS}
        sys.stdout.write(format_human(data, units, names=_names(paths.root, list(data)),
                                      fail_delta=delta, quiet=args.quiet,
                                      colour=args.colour))
    for exc in errors:
        print(f"vzubc: error: {exc}", file=sys.stderr)
    return 1 if errors else 0


def run(args: argparse.Namespace) -> int:
    paths = VzPaths.from_env()
    cg = detect(args.cgroup_root, prefix=paths.cgroup_prefix)
    if args.watch is None:
        return _screen(args, cg, paths)
    if args.watch <= 0:
        raise UsageError("-w: the interval must be above 0 seconds")
    n = 0
    code = 0
    try:
        while args.iterations is None or n < args.iterations:
            if n:
                time.sleep(args.watch)
            sys.stdout.write("\x1b[H\x1b[2J")
            code = _screen(args, cg, paths)
            sys.stdout.flush()
            n += 1
    except KeyboardInterrupt:
        pass
    return code


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("vzubc", build, argv)


def entry() -> NoReturn:
    """The ``vzubc`` program: main(), then a fast exit (see exit_fast)."""
    run_console(main)


if __name__ == "__main__":
    entry()
