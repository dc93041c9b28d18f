"""vzubc: show a VE's user beancounters (OpenVZ's /proc/user_beancounters view)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from vzpkg.cli.common import Parser, emit_json, run_console, run_main
from vzpkg.core.errors import VeError, VzError
from vzpkg.runtime.cgroups import Cgroups, check_ctid, detect
from vzpkg.runtime.config import VeConfig, ve_conf_path
from vzpkg.runtime.paths import VzPaths
from vzpkg.runtime.ubc import Beancounter, format_table, to_json

EPILOG = """\
Columns (OpenVZ's): held = in use now, maxheld = the most used, barrier and limit
as configured, failcnt = how often the limit refused the VE (for oomguarpages: how
many processes the OOM killer ended).  physpages and swappages count 4 KiB pages,
kmemsize bytes, numproc processes and threads.

examples:
  vzubc 101            beancounters of VE 101
  vzubc                all running VEs
  vzubc -q 101 102     only resources whose limit was hit
  vzubc -j 101         JSON, for scripts

environment:
  VZ_ROOT   where the VEs' configurations live (default /vz); the barriers the
            kernel does not keep (numproc) come from VZ_ROOT/etc/vz/conf/CTID.conf
"""


def build() -> argparse.ArgumentParser:
    p = Parser(prog="vzubc", description=__doc__, epilog=EPILOG,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ctids", nargs="*", metavar="CTID",
                   help="VEs to show (default: every running VE)")
    p.add_argument("-j", "--json", action="store_true", help="print JSON")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="show only resources with a non-zero failcnt")
    p.add_argument("--cgroup-root", type=Path, default=Path("/sys/fs/cgroup"),
                   metavar="PATH", help="where cgroups are mounted (default %(default)s)")
    p.set_defaults(func=run)
    return p


def _config(vz_root: Path, ctid: str) -> VeConfig | None:
    path = ve_conf_path(vz_root, ctid)
    return VeConfig.load(path) if path.is_file() else None


def collect(cg: Cgroups, vz_root: Path, ctids: Sequence[str]
            ) -> tuple[dict[str, list[Beancounter]], list[VzError]]:
    out: dict[str, list[Beancounter]] = {}
    errors: list[VzError] = []
    for ctid in ctids:
        try:
            check_ctid(ctid)
            cfg = _config(vz_root, ctid)
            if not cg.exists(ctid):
                if cfg is None:
                    raise VeError(f"VE {ctid} does not exist "
                                  f"(no {ve_conf_path(vz_root, ctid)}, no cgroup)",
                                  hint="check the CTID with `vzlist -a`")
                raise VeError(f"VE {ctid} is not running: it has no cgroup",
                              hint=f"start it with `vzctl start {ctid}`")
            out[ctid] = cg.counters(ctid, cfg)
        except VzError as exc:
            errors.append(exc)
    return out, errors


def run(args: argparse.Namespace) -> int:
    paths = VzPaths.from_env()
    vz_root = paths.root
    cg = detect(args.cgroup_root, prefix=paths.cgroup_prefix)
    ctids = list(args.ctids) or cg.list_ctids()
    data, errors = collect(cg, vz_root, ctids)
    if args.json:
        emit_json(to_json(data))
    elif data or not errors:
        sys.stdout.write(format_table(data, only_failed=args.quiet))
    for exc in errors:
        print(f"vzubc: error: {exc}", file=sys.stderr)
    return 1 if errors else 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("vzubc", build, argv)


def entry() -> NoReturn:
    """The ``vzubc`` program: main(), then a fast exit (see exit_fast)."""
    run_console(main)


if __name__ == "__main__":
    entry()
