"""``vzctl``: create, start, run, change, stop and destroy VEs (OpenVZ style)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from vzpkg import __version__
from vzpkg.cli.common import Parser, run_console, run_main
from vzpkg.core.errors import UsageError, VeError, VeRunningError
from vzpkg.core.settings import load_settings
from vzpkg.runtime import console, hostset, params
from vzpkg.runtime.paths import VzPaths, check_ctid
from vzpkg.runtime.ve import Runtime, by_name

EPILOG = """\
examples:
  vzctl create 101 --ostemplate debian-12 --hostname web --ipadd 10.0.0.101
  vzctl create 102 --ostemplate debian-12 --layout overlay
  vzctl start 101
  vzctl exec 101 'ps ax'          run through /bin/sh -c, exit status of the command
  vzctl exec2 101 'grep -c ^ /etc/passwd'   the same as exec (both give the status)
  vzctl enter 101                 interactive shell (leave with exit)
  vzctl set 101 --ipadd fd00::101 --nameserver 10.0.0.1 --save
  vzctl set 101 --numproc 200:200 --ram 512M --cpuunits 2000 --save
  vzctl set 101 --userpasswd root:secret
  vzctl status 101                CTID 101 exist mounted running
  vzctl ubc 101                   beancounters: which limit did the VE hit?
  vzctl stop 101 [--fast]
  vzctl destroy 101

A VE's pid 1 is its own /sbin/init (systemd on Debian, Fedora, AlmaLinux, Rocky),
in a user namespace of its own with a delegated cgroup2 subtree; a tree without an
init gets a small shell init that runs /etc/rc.vz start, else the start scripts in
/etc/rc2.d (or /etc/rc.d/rc3.d).  halt, poweroff and reboot inside work as on a
server (the event helper started by vzctl start hears them).

Everything lives under $VZ_ROOT (default /vz): etc/vz/vz.conf, etc/vz/conf/CTID.conf,
private/CTID, root/CTID.  Caches are found in vzpkg's cache directory (--cache-dir,
$VZPKG_CACHE_DIR, configuration) and in $VZ_ROOT/template/cache.
"""


def _rt(args: argparse.Namespace) -> Runtime:
    if os.geteuid() != 0 and args.cmd != "status":
        raise VeError(f"vzctl {args.cmd} needs root (namespaces, mounts, cgroups)",
                      hint=f"run it as root: sudo vzctl {args.cmd} ...")
    hostset.repair()        # host settings a killed vzctl left changed go back
    settings = load_settings(cache_dir=args.cache_dir)
    return Runtime(VzPaths.from_env(), [settings.cache_dir], settings=settings,
                   wait_lock=args.wait_lock)


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(text, flush=True)


def cmd_create(args: argparse.Namespace) -> int:
    rt = _rt(args)
    if args.hostname is not None:
        try:
            params.check_hostname(args.hostname)
        except params.ParamError as exc:
            raise UsageError(f"--hostname: {exc}") from None
    ostemplate = args.ostemplate or rt.global_conf().get("DEF_OSTEMPLATE")
    if not ostemplate:
        raise UsageError("no --ostemplate given, and vz.conf names no DEF_OSTEMPLATE",
                         hint=f"vzctl create {args.ctid} --ostemplate NAME, or set "
                              f'DEF_OSTEMPLATE="NAME" in {rt.paths.global_conf}')
    _say(args, f"Creating VE {args.ctid} from {ostemplate} ...")
    notes = rt.create(args.ctid, ostemplate, config=args.config, hostname=args.hostname,
                      ipadd=args.ipadd or (), layout_name=args.layout,
                      userns=None if args.userns is None else args.userns == "yes",
                      idmap_mode=args.idmap_mode, values=params.options_to_values(args))
    for note in notes:
        _say(args, note)
    cfg = rt.config(args.ctid)
    ids = cfg.get("VE_IDMAP")
    how = f"user namespace, host ids {ids}" if ids else "host root, no user namespace"
    if ids:
        how += (", files shifted on disk" if cfg.get("VE_IDMAP_MODE") == "shift"
                else ", idmapped mount")
    _say(args, f"VE {args.ctid} created ({cfg.get('VE_LAYOUT')} layout, {how}, "
               f"{rt.paths.private(args.ctid)})")
    return 0


def _start(rt: Runtime, ctid: int) -> int:
    """Start through the host's event helper, which then hears the VE's halt and
    reboot (vzpkg.runtime.eventd); VZCTL_EVENTD=no starts it from here."""
    from vzpkg.runtime import eventd
    if not eventd.enabled():
        return rt.start(ctid)
    rt.config(ctid)             # a VE that does not exist: say so from here
    rt.check_unlocked(ctid)     # (the helper itself waits for the lock)
    if rt.state(ctid).running:  # (and with vzctl's exit status: the helper's has none)
        raise VeRunningError(f"VE {ctid} is already running",
                             hint=f"stop it first: vzctl stop {ctid}")
    return eventd.start(rt.paths, ctid)


def _lxcfs_warning(ctid: int) -> None:
    from vzpkg.runtime import lxcfs
    if warning := lxcfs.missing():
        print(f"vzctl: VE {ctid}: {warning}", file=sys.stderr)
        print(f"  hint: {lxcfs.START_HINT}", file=sys.stderr)


def cmd_start(args: argparse.Namespace) -> int:
    rt = _rt(args)
    pid = _start(rt, args.ctid)
    _say(args, f"VE {args.ctid} started (init pid {pid} on the host)")
    _lxcfs_warning(args.ctid)
    if args.wait:
        state = rt.wait_booted(args.ctid, timeout=args.wait_timeout)
        _say(args, f"VE {args.ctid} is up ({state})")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    _rt(args).stop(args.ctid, fast=args.fast, timeout=args.timeout)
    _say(args, f"VE {args.ctid} stopped")
    return 0


def cmd_restart(args: argparse.Namespace) -> int:
    rt = _rt(args)
    if rt.state(args.ctid).running:
        rt.stop(args.ctid)
    pid = _start(rt, args.ctid)
    _say(args, f"VE {args.ctid} restarted (init pid {pid} on the host)")
    _lxcfs_warning(args.ctid)
    return 0


def cmd_chkpnt(args: argparse.Namespace) -> int:
    from vzpkg.runtime import chkpnt
    rt = _rt(args)
    _say(args, f"Setting up checkpoint of VE {args.ctid} ...")
    dump, frozen = chkpnt.chkpnt(rt, args.ctid, Path(args.dumpfile) if args.dumpfile else None)
    _say(args, f"Checkpointing completed successfully: VE {args.ctid} is stopped, its "
               f"state is in {dump} (dumped in {frozen:.2f} s)")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from vzpkg.runtime import restore
    rt = _rt(args)
    if getattr(args, "check", False):
        from vzpkg.core.errors import RestoreError
        from vzpkg.runtime import criu
        found = criu.find(RestoreError)
        _say(args, f"VE {args.ctid} can be restored here: criu {found.version} "
                   f"({found.where})")
        return 0
    if getattr(args, "page_stream", False):
        from vzpkg.runtime import migrate
        if not args.dumpfile:
            raise UsageError("--page-stream needs --dumpfile DIR (the lazy dump directory)")
        migrate.receive_lazy(rt, args.ctid, Path(args.dumpfile))
        return 0
    _say(args, f"Restoring VE {args.ctid} ...")
    pid = restore.restore(rt, args.ctid, Path(args.dumpfile) if args.dumpfile else None)
    _say(args, f"Restoring completed successfully: VE {args.ctid} runs again "
               f"(init pid {pid} on the host)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    print(_rt(args).state(args.ctid).line())
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    rt = _rt(args)
    words: list[str] = args.command
    if not words:
        raise UsageError("no command given", hint="vzctl exec CTID COMMAND [ARG...]")
    if words == ["-"]:
        return rt.run_shell(args.ctid, sys.stdin.read(), None)
    # exec and exec2 alike: the words joined into one line for the VE's /bin/sh -c, and
    # the command's exit status (OpenVZ's exec says 8 for any failure; see README)
    return rt.run_shell(args.ctid, " ".join(words))


def cmd_enter(args: argparse.Namespace) -> int:
    rt = _rt(args)
    _say(args, f"entered VE {args.ctid}")
    code = console.enter(rt, args.ctid)
    _say(args, f"exited from VE {args.ctid}")
    return code


def cmd_console(args: argparse.Namespace) -> int:
    from vzpkg.runtime import eventd
    rt = _rt(args)
    rt.config(args.ctid)
    eventd.console(rt.paths, args.ctid)
    _say(args, f"detached from the console of VE {args.ctid}")
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    from vzpkg.runtime.vset import live_config
    rt = _rt(args)
    saved = rt.config(args.ctid)
    # --ipadd/--ipdel edit the list the VE has now (with earlier live changes); --save
    # edits CTID.conf's
    values = params.options_to_values(args, current=live_config(rt, args.ctid, saved).get)
    if not (values or args.userpasswd):
        raise UsageError("nothing to set", hint="see vzctl set --help")
    notes = rt.set(args.ctid, values, userpasswd=args.userpasswd or (), save=args.save,
                   saved_values=params.options_to_values(args, current=saved.get)
                   if args.save else None)
    for n in notes:
        _say(args, n)
    return 0


def cmd_mount(args: argparse.Namespace) -> int:
    root = _rt(args).mount(args.ctid)
    _say(args, f"VE {args.ctid} mounted on {root}")
    return 0


def cmd_umount(args: argparse.Namespace) -> int:
    _rt(args).umount(args.ctid)
    _say(args, f"VE {args.ctid} unmounted")
    return 0


def cmd_ubc(args: argparse.Namespace) -> int:
    from vzpkg.cli import vzubc
    return vzubc.main([*(["-q"] if args.quiet else []), str(args.ctid)])


def cmd_destroy(args: argparse.Namespace) -> int:
    _rt(args).destroy(args.ctid, stop=args.force)
    _say(args, f"VE {args.ctid} destroyed")
    return 0


def _ctid(text: str) -> int:
    """A CTID, or the NAME a VE was given with vzctl set --name."""
    if text.isdigit():
        try:
            return check_ctid(text)
        except UsageError as exc:
            raise argparse.ArgumentTypeError(exc.message) from None
    found = by_name(VzPaths.from_env(), text)
    if found is None:
        raise argparse.ArgumentTypeError(
            f"invalid CTID {text!r}: expected a number such as 101, or the NAME of a VE")
    return found


def cmd_boot(args: argparse.Namespace) -> int:
    from vzpkg.runtime import boot
    rt = _rt(args)
    if args.install_unit is not None:
        unit_dir = Path(args.install_unit)
        unit = unit_dir / boot.unit_name(rt.paths)
        unit_dir.mkdir(parents=True, exist_ok=True)
        unit.write_text(boot.unit_text(rt.paths))
        _say(args, f"wrote {unit}; enable it with: systemctl daemon-reload && "
                   f"systemctl enable {unit.name}")
        return 0
    if args.stop:
        running = [c for c in reversed(boot.boot_order(rt.paths) + rt.ctids())
                   if rt.state(c).running]
        order = list(dict.fromkeys(running))

        def act(ctid: int) -> str:
            rt.stop(ctid)
            return "stopped"
    else:
        order = [c for c in boot.boot_order(rt.paths) if not rt.state(c).running]

        def act(ctid: int) -> str:
            return f"started (init pid {_start(rt, ctid)})"
    if args.dry_run:
        for ctid in order:
            print(ctid)
        return 0
    outcomes = boot.run_all(order, act)
    for o in outcomes:
        if o.ok:
            _say(args, f"VE {o.ctid}: {o.text}")
        else:
            print(f"vzctl: VE {o.ctid}: {o.text}", file=sys.stderr)
    return 1 if any(not o.ok for o in outcomes) else 0


def cmd_runscript(args: argparse.Namespace) -> int:
    from vzpkg.runtime import vepkg
    rt = _rt(args)
    words: list[str] = args.words
    if args.all:
        ctids = rt.ctids()
    else:
        if len(words) < 2:
            raise UsageError("expected CTID SCRIPT", hint="vzctl runscript 101 ./fix.sh, "
                                                          "or vzctl runscript --all ./fix.sh")
        ctids = [_ctid(words[0])]
        rt.config(ctids[0])     # a VE that does not exist: exit status 14, as OpenVZ
        words = words[1:]
    if not words:
        raise UsageError("no SCRIPT given", hint="vzctl runscript CTID SCRIPT [ARG...]")
    script = Path(words[0])
    try:
        content = script.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the script {script}: {exc.strerror}") from None
    req = vepkg.Request(op="runscript", script=content, args=tuple(words[1:]))
    out = vepkg.run(rt, None, ctids, req, jobs=args.jobs)
    for r in out.results:
        if args.all:
            print(f"== VE {r['ctid']}: {'ok' if r['ok'] else r['error']}", flush=True)
        sys.stdout.write(r.get("output", ""))
        if "output" not in r:
            print(f"vzctl: VE {r['ctid']}: {r['error']}", file=sys.stderr)
    sys.stdout.flush()
    if not args.all and out.results:
        r = out.results[0]
        if "status" not in r:
            return 1
        return int(r["status"])
    return 1 if out.failed else 0


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="vzctl", description=__doc__, epilog=EPILOG,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"vzctl (vzpkg) {__version__}")
    p.add_argument("--cache-dir", metavar="DIR", help="where vzpkg caches are stored")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    p.add_argument("--wait-lock", action="store_true",
                   help="when another vzctl works on the VE, wait for it to finish "
                        "(without it: exit status 9 at once, as OpenVZ's vzctl)")
    sub = p.add_subparsers(title="commands", metavar="COMMAND", dest="cmd")

    def cmd(name: str, func: object, help_: str, aliases: Sequence[str] = ()
            ) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_, aliases=list(aliases))
        sp.add_argument("ctid", type=_ctid, metavar="CTID", help="the VE's number, e.g. 101")
        sp.add_argument("--wait-lock", action="store_true", default=argparse.SUPPRESS,
                        help="wait while another vzctl works on the VE (else exit 9)")
        sp.set_defaults(func=func)
        return sp

    c = cmd("create", cmd_create, "make a VE from a cache")
    c.add_argument("--ostemplate", metavar="NAME",
                   help="cache name, e.g. debian-12 or debian-12-x86_64-minimal "
                        "(default: DEF_OSTEMPLATE of vz.conf)")
    c.add_argument("--config", metavar="SAMPLE",
                   help="use etc/vz/conf/ve-SAMPLE.conf-sample (default: CONFIGFILE)")
    c.add_argument("--hostname", metavar="NAME")
    c.add_argument("--ipadd", action="append", metavar="IP", help="an address (repeatable)")
    c.add_argument("--layout", choices=("plain", "overlay"),
                   help="plain: own unpacked copy; overlay: on a shared read-only copy")
    c.add_argument("--userns", choices=("yes", "no"),
                   help="yes (default): the VE's root is an unprivileged host id range in "
                        "a user namespace of its own; no: host root with a reduced "
                        "capability set, the old mode (weaker; docs/SECURITY.md)")
    c.add_argument("--idmap-mode", choices=("auto", "mount", "shift"),
                   help="how a user-namespaced VE's files get its ids: mount, an idmapped "
                        "mount (files stay 0..65535 on disk); shift, their owners are "
                        "shifted to the VE's range on disk now (plain layout; for file "
                        "systems or hosts without working idmapped mounts); auto "
                        "(default: VE_IDMAP_MODE of vz.conf, else auto): mount where the "
                        "file system takes one, else shift")
    params.add_set_options(c, only=("diskspace", "diskinodes", "quotatime"))
    st = cmd("start", cmd_start, "start a VE: namespaces, cgroup, network, init")
    st.add_argument("--wait", action="store_true",
                    help="return when the VE's init says it is up (systemd: "
                         "is-system-running is running or degraded)")
    st.add_argument("--wait-timeout", type=float, default=120.0, metavar="SEC",
                    help="how long --wait waits (default 120)")
    s = cmd("stop", cmd_stop, "stop a VE: SIGTERM to init, kill what is left after a while")
    s.add_argument("--fast", action="store_true", help="kill at once, no SIGTERM")
    s.add_argument("--timeout", type=float, metavar="SEC",
                   help="wait this long for init (default: VE_STOP_TIMEOUT in vz.conf)")
    cmd("restart", cmd_restart, "stop (if running) and start a VE")
    for name, func, what in (
            ("chkpnt", cmd_chkpnt, "checkpoint a running VE: freeze it, save its whole "
                                   "state (processes, memory, files, TCP connections, "
                                   "addresses) to the dump file, stop it (exit 16 on "
                                   "failure)"),
            ("suspend", cmd_chkpnt, "the same as chkpnt"),
            ("restore", cmd_restore, "bring a VE back from its dump file; the dump is "
                                     "checked first and a changed or truncated one is "
                                     "refused (exit 17 on failure)"),
            ("resume", cmd_restore, "the same as restore")):
        ck = cmd(name, func, what)
        ck.add_argument("--dumpfile", metavar="FILE",
                        help="where the state goes / comes from (default: DUMPDIR of "
                             "vz.conf, else $VZ_ROOT/dump, /Dump.CTID)")
        if func is cmd_restore:
            ck.add_argument("--page-stream", action="store_true",
                            help="vzmigrate --lazy's side at the destination: wait for "
                                 "'go' on stdin, restore from the lazy dump directory "
                                 "--dumpfile, then carry the VE's memory, which comes "
                                 "later, from the source's CRIU on stdin/stdout; "
                                 "messages go to stderr; exit 0 once every page is here")
            ck.add_argument("--check", action="store_true",
                            help="restore nothing: check that this host can restore "
                                 "(a working CRIU); vzmigrate --online asks this before "
                                 "the VE freezes")
    cmd("status", cmd_status, "print: CTID N exist|deleted mounted|unmounted running|down")
    for name, what in (("exec", "run a command line in a VE through /bin/sh -c ('-': "
                                "read it from stdin); exit status is the command's"),
                       ("exec2", "the same as exec, as on OpenVZ: through /bin/sh -c, "
                                 "exit status is the command's")):
        e = cmd(name, cmd_exec, what)
        e.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND")
    cmd("enter", cmd_enter, "open an interactive shell in a running VE")
    cmd("console", cmd_console, "attach to the VE's console (boot messages, getty); "
                                "Esc . detaches")
    st = cmd("set", cmd_set, "change settings: live on a running VE, stored with --save")
    st.add_argument("--userpasswd", action="append", metavar="USER:PASS",
                    help="set a password with the VE's chpasswd (not stored)")
    st.add_argument("--save", action="store_true", help="store the settings in CTID.conf")
    params.add_set_options(st)
    cmd("ubc", cmd_ubc, "the VE's beancounters: held, maxheld, barrier, limit, failcnt "
                        "(as vzubc CTID; -q: only resources that hit their limit)")
    b = sub.add_parser("boot", help="start the VEs marked ONBOOT=yes, in BOOTORDER (host boot)",
                       description="Start every VE with ONBOOT=yes that is not running: "
                                   "higher BOOTORDER first, VEs without one last.  With "
                                   "--stop, stop every running VE in the reverse order "
                                   "(host shutdown).  One failing VE never stops the others; "
                                   "the exit status says whether any failed.")
    b.add_argument("--stop", action="store_true", help="stop the running VEs instead")
    b.add_argument("--dry-run", action="store_true", help="print the CTIDs in order, do nothing")
    b.add_argument("--install-unit", nargs="?", const="/etc/systemd/system", metavar="DIR",
                   help="write the host's systemd unit that runs 'vzctl boot' at boot and "
                        "'vzctl boot --stop' at shutdown (default DIR /etc/systemd/system)")
    b.add_argument("--wait-lock", action="store_true", default=argparse.SUPPRESS,
                   help="wait while another vzctl works on a VE (else that VE fails)")
    b.set_defaults(func=cmd_boot)
    rs = sub.add_parser("runscript", help="run a host-side script inside a VE (or every VE)",
                        description="Run SCRIPT, a file on the host, inside the VE: its "
                                    "content is piped to the VE's /bin/sh, which runs as "
                                    "the VE's root (ARGs are its $1...).  A running VE is "
                                    "joined; a stopped VE is mounted for the script only "
                                    "and the script is pid 1 of fresh namespaces with no "
                                    "network.  Exit status: the script's (with --all: 1 "
                                    "if it failed in any VE).  Output goes to stdout; "
                                    "each VE's is kept in $VZ_ROOT/log/vzpkg/CTID.log.",
                        epilog="examples:\n  vzctl runscript 101 ./fix-dns.sh\n"
                               "  vzctl runscript --all ./report.sh --verbose",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    rs.add_argument("words", nargs=argparse.REMAINDER, metavar="CTID SCRIPT [ARG...]")
    rs.add_argument("--all", action="store_true", help="run it in every VE of $VZ_ROOT")
    rs.add_argument("--jobs", "-j", type=int, default=4, metavar="N",
                    help="with --all: N VEs at once (default 4)")
    rs.set_defaults(func=cmd_runscript)
    cmd("mount", cmd_mount, "mount a stopped VE's root on $VZ_ROOT/root/CTID")
    cmd("umount", cmd_umount, "unmount a stopped VE's root")
    d = cmd("destroy", cmd_destroy, "remove a stopped VE: files, config, cgroup, network",
            aliases=("delete",))
    d.add_argument("--force", action="store_true",
                   help="stop the VE first if it runs (without it a running VE is refused, "
                        "exit status 32)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    os.umask(0o022)
    return run_main("vzctl", build_parser, argv)


def entry() -> NoReturn:
    """The ``vzctl`` program: main(), then a fast exit (see exit_fast)."""
    run_console(main)


if __name__ == "__main__":
    entry()
