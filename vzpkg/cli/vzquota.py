"""vzquota: a VE's disk usage against its limits (OpenVZ's ``vzquota stat``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from vzpkg.cli.common import Parser, emit_json, run_console, run_main
from vzpkg.core.errors import NoVeConfigError, UsageError

EPILOG = """\
A VE created with --diskspace (and --diskinodes) keeps its files on a disk image of
its own: its size is the hard limit, and the VE's df shows it.  vzquota shows
usage against the limits in OpenVZ's layout: 1k-blocks and inodes, usage, soft
limit, hard limit and grace (QUOTATIME; soft limits are shown, not enforced).

commands:
  stat CTID    usage now (a running VE's mounted image, else the image on disk)
  show CTID    the same (OpenVZ's show reads the quota file; here the image)

examples:
  vzquota stat 101
  vzquota stat 101 -j        JSON, numbers in KiB and inodes

The limits are changed with vzctl: vzctl set 101 --diskspace 10G:11G --save
"""


def build() -> argparse.ArgumentParser:
    p = Parser(prog="vzquota", description=__doc__, epilog=EPILOG,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("stat", "show"), help="stat or show")
    p.add_argument("ctid", metavar="CTID", help="the VE's number (or NAME)")
    p.add_argument("-j", "--json", action="store_true", help="print JSON")
    p.add_argument("-t", action="store_true", dest="ignored",
                   help="accepted for OpenVZ's vzquota stat -t (the figures are always "
                        "current)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from vzpkg.cli.vzlist import resolve
    from vzpkg.runtime import diskusage, quota
    from vzpkg.runtime.paths import VzPaths
    from vzpkg.runtime.ve import Runtime
    rt = Runtime(VzPaths.from_env())
    ctid = resolve(rt.paths, args.ctid)
    if not rt.paths.conf(ctid).is_file():
        raise NoVeConfigError(f"VE {ctid} does not exist",
                              hint="check the CTID with `vzlist -a`")
    lim = quota.of_config(rt.config(ctid).get)
    with rt.locked(ctid):
        used = diskusage.usage(rt.paths, ctid)
    if used is None:
        raise UsageError(f"VE {ctid} has no disk quota: it was created without "
                         "--diskspace, so its files share the host's file system",
                         hint="a limit is given at create: vzctl create CTID "
                              "--diskspace 10G:11G ...")
    def num(n: int) -> int | None:
        return None if n >= quota.UNLIMITED else n
    data = {"ctid": ctid, "quotatime": lim.quotatime,
            "diskspace": {"usage": used.space_used, "softlimit": num(lim.space_soft),
                          "hardlimit": num(lim.space_hard), "size": used.space_size},
            "diskinodes": {"usage": used.inodes_used, "softlimit": num(lim.inodes_soft),
                           "hardlimit": num(lim.inodes_hard), "size": used.inodes_size}}
    if args.json:
        emit_json(data)
        return 0
    def cell(n: int | None) -> str:
        return "unlimited" if n is None else str(n)
    out = [f"{'resource':>11} {'usage':>14} {'softlimit':>14} {'hardlimit':>14} "
           f"{'grace':>8}"]
    for label, key in (("1k-blocks", "diskspace"), ("inodes", "diskinodes")):
        d = data[key]
        assert isinstance(d, dict)
        out.append(f"{label:>11} {d['usage']:>14} {cell(d['softlimit']):>14} "
                   f"{cell(d['hardlimit']):>14} {lim.quotatime:>8}")
    sys.stdout.write("\n".join(out) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("vzquota", build, argv)


def entry() -> NoReturn:
    """The ``vzquota`` program: main(), then a fast exit (see exit_fast)."""
    run_console(main)


if __name__ == "__main__":
    entry()
