"""``vzmigrate``: move a VE to another host over ssh (OpenVZ style)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
from collections.abc import Sequence
from typing import NoReturn

from vzpkg.cli.common import Parser, run_console, run_main
from vzpkg.core.errors import VeError
from vzpkg.runtime import hostset
from vzpkg.runtime.paths import VzPaths

EPILOG = """\
examples:
  vzmigrate --online root@host2 101      live: the VE freezes for a moment, its
                                         processes and TCP connections go on there
  vzmigrate --online --lazy host2 101    post-copy: the VE runs there after a
                                         short freeze whatever its memory size;
                                         the memory follows (see below)
  vzmigrate host2 101                    offline: stop, copy, start there
  vzmigrate --remote-vzroot /srv/vz --ssh "-p 2222 -i key" host2 101

The private area and CTID.conf are copied with rsync over ssh (root login with a key
at DEST); the destination runs its own vzctl (--remote-vzctl) with its own VZ_ROOT
(--remote-vzroot; default: the destination's own default).  The VE is removed here
only once it runs there; if a step fails it runs here again, and the destination's
copy is removed (kept with --keep-dst).  A destination that has the CTID is refused.

--lazy (post-copy): the dump leaves the memory here, served by CRIU from the frozen
processes; the VE runs there as soon as the rest is restored, and each page goes
when it is first touched, the others in the background.  Until the last page has
arrived the VE needs both hosts and the ssh connection: if the transfer breaks
then, the VE is stopped at both ends (its processes are lost; its files are at
both) and vzmigrate exits 45 (if the last page had arrived when the session
broke, the VE runs there and only the copy here is stopped: it says so).  A
guard at the destination stops the VE there even if its vzctl is killed.  A
failure before the VE runs there leaves it running here, as without --lazy.
--online first asks the destination whether it can restore (a working CRIU):
if not, nothing is copied or frozen.  Without --lazy the whole memory is written,
copied and read inside the freeze (a longer freeze; any failure leaves the VE
here).  The restore there briefly sets vm.unprivileged_userfaultfd=1 (CRIU makes
the userfaultfd inside the VE's user namespace); see docs/SECURITY.md.
Exit status: 0 done; 44 the CTID exists there; 45 --lazy failed after the VE
started there (stopped at both ends); 1 another failure (the VE is back).
"""


def cmd_migrate(args: argparse.Namespace) -> int:
    from vzpkg.runtime.migrate import Remote, migrate
    from vzpkg.runtime.ve import Runtime
    if os.geteuid() != 0:
        raise VeError("vzmigrate needs root", hint="run it as root")
    hostset.repair()        # host settings a killed vzmigrate left changed go back
    rt = Runtime(VzPaths.from_env(), wait_lock=True)
    remote = Remote(args.dest, shlex.split(args.ssh or ""), args.remote_vzroot,
                    args.remote_vzctl)
    def say(text: str) -> None:
        if not (args.quiet or args.json):
            print(text, flush=True)

    rep = migrate(rt, remote, args.ctid, online=args.online, keep_dst=args.keep_dst,
                  lazy=args.lazy, say=say)
    if args.json:
        print(json.dumps({"ctid": rep.ctid, "dest": rep.dest, "online": rep.online,
                          "lazy": rep.lazy, "frozen_seconds": rep.frozen,
                          "steps": rep.steps}))
    else:
        say(f"VE {args.ctid} migrated to {args.dest}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="vzmigrate", description=__doc__, epilog=EPILOG,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--online", action="store_true",
                   help="live migration: checkpoint here, restore there (CRIU)")
    p.add_argument("--lazy", "--post-copy", action="store_true",
                   help="with --online: post-copy, the memory follows after the VE runs "
                        "there (short freeze; a broken transfer stops the VE, exit 45)")
    p.add_argument("--keep-dst", action="store_true",
                   help="on failure, keep what was copied to the destination")
    p.add_argument("--ssh", metavar="OPTIONS", help='extra ssh options, e.g. "-p 2222 -i KEY"')
    p.add_argument("--remote-vzroot", metavar="DIR",
                   help="the destination's VZ_ROOT (default: its own default, /vz)")
    p.add_argument("--remote-vzctl", metavar="COMMAND", default="vzctl",
                   help="how to run vzctl at the destination (default: vzctl)")
    p.add_argument("--json", action="store_true", help="print the steps' times as JSON")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("dest", metavar="DEST", help="[user@]host")
    p.add_argument("ctid", type=int, metavar="CTID")
    p.set_defaults(func=cmd_migrate)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    os.umask(0o022)
    return run_main("vzmigrate", build_parser, argv)


def entry() -> NoReturn:
    run_console(main)


if __name__ == "__main__":
    entry()
