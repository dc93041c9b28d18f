"""``vzpkg install|remove|update|list|info|check-updates CTID…|--all``: software in VEs.

``vzpkg list``, ``update`` and ``remove`` also name cache commands; they mean
the VE commands when their first argument is a CTID or ``--all`` is given
(:func:`is_ve_command`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from vzpkg.cli.common import Parser, add_json_flag, emit_json
from vzpkg.core.errors import UsageError

COMMANDS = ("install", "remove", "update", "list", "info", "check-updates")
ONLY_VE = frozenset({"install", "info", "check-updates"})
GLOBAL_WITH_VALUE = frozenset({"--workspace", "--cache-dir"})

EPILOG = """\
examples:
  vzpkg install 101 102 nginx        apt or dnf of each VE, as its root
  vzpkg install --all --jobs 8 htop  every VE, 8 at a time
  vzpkg install 101 --set default    what the template's set 'default' adds
  vzpkg check-updates --all          pending updates; [security] marks security ones
  vzpkg update --all --security      install only the security updates
  vzpkg update 101                   upgrade every package of VE 101
  vzpkg remove 101 nginx --dry-run   what would happen, nothing changed
  vzpkg list 101 --json              installed packages
  vzpkg info 101 nginx

Each VE runs its own package manager (apt, dnf) inside, as the VE's root; its
sources and keys are its own, and only its downloads go through the host's
caching package proxy (the one builds use): a package is downloaded once for
all VEs.  A VE needs no network of its own.  A running VE is joined; a stopped
VE is mounted for the command only, in a mount namespace of the command's own.
An RPM VE without dnf gets the host's dnf (--installroot) in its own user
namespace, as OpenVZ's vzyum served such VEs.  A failing VE never stops the
others; each has a log in $VZ_ROOT/log/vzpkg/CTID.log, and the exit status is 1
when any VE failed (--json lists every VE's result).
"""


def is_ve_command(argv: Sequence[str]) -> bool:
    """Whether *argv* (vzpkg's arguments) is one of this module's commands."""
    words = list(argv)
    i = 0
    while i < len(words) and words[i].startswith("-"):
        i += 2 if words[i] in GLOBAL_WITH_VALUE else 1
    if i >= len(words) or words[i] not in COMMANDS:
        return False
    if words[i] in ONLY_VE:
        return True
    rest = words[i + 1:]
    first = next((w for w in rest if not w.startswith("-")), "")
    return "--all" in rest or first.isdigit()


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="vzpkg", description="Manage software in VEs.", epilog=EPILOG,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workspace", metavar="DIR", help="workspace with metadata/ (templates)")
    p.add_argument("--cache-dir", metavar="DIR", help="where caches (and the package "
                                                       "cache, .pkgcache) are")
    sub = p.add_subparsers(title="commands", metavar="COMMAND", dest="cmd")
    helps = {"install": "install packages in VEs",
             "remove": "remove packages from VEs",
             "update": "upgrade the packages of VEs (all, or those named)",
             "list": "list the packages installed in VEs",
             "info": "show what the VEs' repositories say of packages",
             "check-updates": "list the pending updates of VEs, security updates marked"}
    for name in COMMANDS:
        c = sub.add_parser(name, help=helps[name], description=helps[name] + ".",
                           epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
        c.add_argument("words", nargs="*", metavar="CTID|PACKAGE",
                       help="the VEs' numbers first, then package names")
        c.add_argument("--all", action="store_true", help="every VE of $VZ_ROOT")
        c.add_argument("--jobs", "-j", type=int, default=4, metavar="N",
                       help="work on N VEs at once (default 4)")
        c.add_argument("--dry-run", action="store_true",
                       help="let the package manager say what it would do; change nothing")
        add_json_flag(c)
        if name == "install":
            c.add_argument("--set", dest="set_name", metavar="SET",
                           help="also install what the template set SET adds over the set "
                                "the VE was made from (e.g. default)")
        if name == "update":
            c.add_argument("--security", action="store_true",
                           help="install only the pending security updates")
        c.set_defaults(func=run)
    return p


def _split(args: argparse.Namespace, all_ctids: list[int]) -> tuple[list[int], list[str]]:
    from vzpkg.runtime import pkgmgr
    from vzpkg.runtime.paths import check_ctid
    words: list[str] = args.words
    ctids: list[int] = []
    if not args.all:
        while words and words[0].isdigit():
            ctids.append(check_ctid(words[0]))
            words = words[1:]
        if not ctids:
            raise UsageError(f"vzpkg {args.cmd}: name the VEs (CTID ...) or give --all",
                             hint=f"vzpkg {args.cmd} 101 ... or vzpkg {args.cmd} --all ...")
    else:
        ctids = all_ctids
    packages = [pkgmgr.check_package(w) for w in words]
    needs = args.cmd in ("install", "remove", "info")
    if needs and not packages and not getattr(args, "set_name", None):
        raise UsageError(f"vzpkg {args.cmd}: no package named",
                         hint=f"vzpkg {args.cmd} CTID PACKAGE ...")
    if args.cmd in ("list", "check-updates") and packages:
        raise UsageError(f"vzpkg {args.cmd} takes no package names: "
                         f"{' '.join(packages)}")
    if args.jobs < 1:
        raise UsageError("--jobs must be 1 or more")
    return list(dict.fromkeys(ctids)), packages


def run(args: argparse.Namespace) -> int:
    import os

    from vzpkg.core.errors import VeError
    from vzpkg.core.settings import load_settings
    from vzpkg.runtime import vepkg
    from vzpkg.runtime.paths import VzPaths
    from vzpkg.runtime.ve import Runtime
    if os.geteuid() != 0:
        raise VeError(f"vzpkg {args.cmd} needs root (it enters VEs)",
                      hint=f"run it as root: sudo vzpkg {args.cmd} ...")
    settings = load_settings(workspace=args.workspace, cache_dir=args.cache_dir)
    rt = Runtime(VzPaths.from_env(), [settings.cache_dir], settings=settings)
    ctids, packages = _split(args, rt.ctids())
    if not ctids:
        raise UsageError("--all: there are no VEs", hint="vzlist -a lists them")
    req = vepkg.Request(op=args.cmd, packages=tuple(packages), dry_run=args.dry_run,
                        security=getattr(args, "security", False),
                        set_name=getattr(args, "set_name", None))
    out = vepkg.run(rt, settings, ctids, req, jobs=args.jobs,
                    on_result=None if args.json else lambda r: _say(args.cmd, r))
    if args.json:
        emit_json({"command": args.cmd, "ok": not out.failed, "results": out.results,
                   "proxy": out.proxy, "seconds": out.seconds})
    elif len(ctids) > 1:
        bad = out.failed
        print(f"{len(ctids) - len(bad)} of {len(ctids)} VEs ok"
              + (f"; failed: {' '.join(str(r['ctid']) for r in bad)}" if bad else ""))
    return 1 if out.failed else 0


def _say(cmd: str, r: dict[str, Any]) -> None:
    ctid = r["ctid"]
    if not r["ok"]:
        print(f"vzpkg: VE {ctid}: error ({r['kind']}): {r['error']} (log: {r['log']})",
              file=sys.stderr, flush=True)
        return
    if cmd == "list":
        for p in r.get("packages", []):
            print(f"{ctid}\t{p['name']}\t{p['version']}\t{p['arch']}")
    elif cmd == "check-updates":
        ups = r.get("updates", [])
        for u in ups:
            mark = "\t[security]" if u["security"] else ""
            print(f"{ctid}\t{u['name']}\t{u['installed']} -> {u['available']}{mark}")
        if not ups:
            print(f"VE {ctid}: no pending updates")
    elif cmd == "info":
        print(f"== VE {ctid} ==\n{r.get('output', '').rstrip()}")
    else:
        print(f"VE {ctid}: {cmd} done ({r.get('state', '')}, {r.get('seconds', 0)} s)",
              flush=True)
