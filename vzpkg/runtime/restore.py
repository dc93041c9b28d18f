"""Restore of a whole VE through CRIU (vzctl restore, resume).

``restore`` checks the dump file first (a changed or truncated one is refused
before anything is touched), then sets up what vzctl start sets up (the cgroup
with the VE's limits, the mounted root), lets CRIU re-create the processes, and
puts the host end of the VE's network back.  A lazy restore (the destination of
``vzmigrate --lazy``) runs while CRIU's lazy-pages daemon, under its guard
(:mod:`lazyguard`), still fills the VE's memory from the source.  CRIU's restore
is bounded in time (:func:`restore_timeout`): a hung one is killed.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from vzpkg.core.errors import RestoreError, VeRunningError
from vzpkg.runtime import criu as criu_mod
from vzpkg.runtime import criuve, dumpfile, layout, lazy, lazyguard, net, ns, state
from vzpkg.runtime.chkpnt import default_dumpfile, log_copy, work_dir
from vzpkg.runtime.criuve import EXT_CG, EXT_CONSOLE, EXT_DEV, DevExtra
from vzpkg.runtime.derived import addrs_of, ids_of, layout_of

if TYPE_CHECKING:
    from vzpkg.runtime.ve import Runtime


def restore(rt: Runtime, ctid: int, dump: Path | None = None) -> int:
    """Bring VE *ctid* back from *dump*; its init's host pid."""
    pid, _ = _restore_checked(rt, ctid, dump or default_dumpfile(rt, ctid), None)
    return pid


@dataclass
class LazyRestore:
    """A VE restored from a lazy dump: it runs, and CRIU's lazy-pages daemon still
    fills its memory from the source's page server, under a guard
    (:mod:`lazyguard`) that stops the VE if the daemon ends before the last page,
    whether or not this vzctl is still there."""

    rt: Runtime
    ctid: int
    pid: int                            # the VE's init on the host
    daemon: lazyguard.Guard
    log: Path

    def wait(self) -> None:
        """Return once every page has arrived.  If the stream broke first the VE is
        killed at once (a page it never got would read as zeros) and RestoreError
        says so."""
        code = self.daemon.wait()
        if code == lazyguard.COMPLETE:
            return
        if code != lazyguard.KILLED:        # the guard did not stop it (killed itself?)
            with contextlib.suppress(Exception):
                self.rt.cgroups.kill_all(str(self.ctid))
            with contextlib.suppress(Exception):
                self.rt.stop(self.ctid, fast=True)
        why = criu_mod.errors_of(self.log) or f"guard status {code}"
        raise RestoreError(f"VE {self.ctid}: its memory stopped arriving from the source "
                           f"before the last page ({why}); the VE was stopped here",
                           hint=f"its files are here and at the source; start it on one "
                                f"of them (vzctl start {self.ctid}); CRIU's log: {self.log}; "
                                f"the guard's: {self.daemon.log}")


def guard_for(rt: Runtime, ctid: int, dump: Path) -> lazyguard.Guard:
    """A guard for restoring VE *ctid* from the lazy dump *dump* (start it before
    the source freezes: a Python process takes a moment to start)."""
    return lazyguard.Guard(rt.paths.root, ctid, dump.with_name(f"{dump.name}.guard.log"))


def restore_lazy(rt: Runtime, ctid: int, dump: Path, pages: socket.socket,
                 guard: lazyguard.Guard | None = None) -> LazyRestore:
    """Restore VE *ctid* from the lazy dump directory *dump*, its memory coming from
    the page server at the other end of *pages*, under *guard* (a new one if None).
    Returns once the VE runs; its :meth:`LazyRestore.wait` returns once all its
    memory is here."""
    guard = guard or guard_for(rt, ctid, dump)
    try:
        pid, daemon = _restore_checked(rt, ctid, dump, (pages, guard))
    except BaseException:
        if guard.poll() is None:
            guard.stand_down()
        raise
    assert daemon is not None
    return LazyRestore(rt, ctid, pid, daemon, dump.with_name(f"{dump.name}.lazy-pages.log"))


_Lazy = tuple[socket.socket, lazyguard.Guard]


def _restore_checked(rt: Runtime, ctid: int, dump: Path, pages: _Lazy | None
                     ) -> tuple[int, lazyguard.Guard | None]:
    with rt.locked(ctid):
        cfg = rt.config(ctid)
        if state.running_pid(rt.paths.pidfile(ctid)) is not None:
            raise VeRunningError(f"VE {ctid} is already running",
                                 hint=f"stop it first: vzctl stop {ctid}")
        if not dump.is_file() and not dump.is_dir():
            raise RestoreError(f"VE {ctid}: no dump file {dump}",
                               hint=f"take one with vzctl chkpnt {ctid}, or name it with "
                                    "--dumpfile")
        ids = ids_of(cfg)
        if ids is None:
            raise RestoreError(f"VE {ctid} runs without a user namespace (VE_USERNS=no); "
                               "only VEs in a user namespace are restored")
        head = dumpfile.read_manifest(dump)
        if head.get("ctid") != ctid:
            raise RestoreError(f"dump file {dump} is of VE {head.get('ctid')}, not {ctid}",
                               hint="name the right one with --dumpfile")
        if head.get("ve_idmap") != (cfg.get("VE_IDMAP") or ""):
            raise RestoreError(f"dump file {dump} was taken with VE_IDMAP="
                               f"{head.get('ve_idmap')!r}, and VE {ctid} now has "
                               f"{cfg.get('VE_IDMAP')!r}: its files would not match",
                               hint="restore it where its id range is the same")
        criu = criu_mod.find(RestoreError)
        in_place = dump.is_dir()
        if pages is not None and not in_place:
            raise RestoreError(f"{dump} is a dump file: memory that comes later needs a "
                               "dump directory (vzmigrate --lazy makes one)")
        work = dump if in_place else work_dir(rt, ctid, "restore")
        try:
            if in_place:                   # refuses a changed dump: nothing touched yet
                for name in ("restore.log", "init.pid"):
                    (dump / name).unlink(missing_ok=True)
                dumpfile.check_dir(dump)
                dump.chmod(0o711)
            else:
                dumpfile.extract(dump, work)
            rt.cleanup(ctid)               # whatever a crashed VE left behind
            try:
                extra = DevExtra([str(t) for t in head.get("ttys") or []],
                                 [d for d in head.get("dev_dirs") or [] if criuve.plain(d)],
                                 bool(head.get("systemd")),
                                 [d for d in head.get("cgroups") or [] if criuve.relpath(d)],
                                 {str(k): str(v) for k, v in
                                  (head.get("cgroup_procs") or {}).items()
                                  if str(k).isdigit() and criuve.relpath(v)})
                return _restore(rt, ctid, cfg, criu, work, dump, extra, pages)
            except BaseException:
                rt.cleanup(ctid)
                raise
        finally:
            if not in_place:
                shutil.rmtree(work, ignore_errors=True)


def _lazy_daemon(criu: criu_mod.Criu, work: Path, dump: Path, pages: _Lazy
                 ) -> lazyguard.Guard:
    """``criu lazy-pages`` on the images in *work*, reading pages from *pages*, run
    by its guard; it listens on ``lazy-pages.socket`` there for the restore."""
    log = dump.with_name(f"{dump.name}.lazy-pages.log")
    log.unlink(missing_ok=True)
    sock, guard = pages
    st_r, st_w = os.pipe()
    try:
        guard.start(criu.argv, ["lazy-pages", "--page-server", "--ps-socket", "{pages}",
                                "-D", str(work), "-o", str(log), "-v4",
                                "--status-fd", "{status}"], sock, st_w)
    finally:
        os.close(st_w)
    if not lazy.read_status(st_r):
        guard.stand_down()
        raise RestoreError(f"CRIU's lazy-pages daemon did not start ("
                           f"{criu_mod.errors_of(log) or 'see its log'})",
                           hint=f"the VE stays stopped; CRIU's log: {log}; the guard's: "
                                f"{guard.log}")
    return guard


def _restore(rt: Runtime, ctid: int, cfg: Any, criu: criu_mod.Criu, work: Path,
             dump: Path, extra: DevExtra, pages: _Lazy | None = None
             ) -> tuple[int, lazyguard.Guard | None]:
    ids = ids_of(cfg)
    assert ids is not None
    cg = rt.cgroups
    cg.create(str(ctid))
    cg.apply(str(ctid), cfg.layered_on(rt.global_conf()))
    cg.delegate(str(ctid), ids.base)
    root = layout.mount(rt.paths, ctid, layout_of(cfg), ids)
    stage = rt.stage(ctid)
    leaves = cg.v2_leaves(str(ctid))
    hif = rt.paths.host_ifname(ctid)
    addrs = addrs_of(cfg)
    args = ["restore", "-D", str(work), "-o", "restore.log", "-v4",
            "--tcp-established", "--restore-detached", "--manage-cgroups=ignore",
            "--root", str(root), "--pidfile", str(work / "init.pid"),
            "--external", f"mnt[{EXT_DEV}]:{stage / 'dev'}",
            # the console's pty master was the event helper's and went with the old
            # init: a restored VE's console leads nowhere (as with VZCTL_EVENTD=no)
            "--external", f"mnt[{EXT_CONSOLE}]:{stage / 'dev' / 'console'}",
            *criuve.lxcfs_restore_externals()]
    if leaves:
        args += ["--external", f"mnt[{EXT_CG}]:{leaves[0]}"]
    if addrs:
        args += ["--external", f"veth[{net.VE_IF}]:{hif}"]
    if net.link_exists(hif):
        net.teardown(hif)
    for rel in extra.cgroups if leaves else []:     # systemd's groups, the VE's own
        d = leaves[0] / rel
        d.mkdir(parents=True, exist_ok=True)
        for f in (d, d / "cgroup.procs", d / "cgroup.subtree_control", d / "cgroup.threads"):
            with contextlib.suppress(OSError):
                os.chown(f, ids.base, ids.base)
    daemon = None
    if pages is not None:
        (work / "lazy-pages.socket").unlink(missing_ok=True)
        daemon = _lazy_daemon(criu, work, dump, pages)
        args.append("--lazy-pages")
    timeout = restore_timeout(work, lazy=daemon is not None)
    try:
        with lazy.uffd_window() if daemon is not None else contextlib.nullcontext():
            r = _run_in_ve_context(rt, ctid, ids, stage, criu, args, extra, timeout)
    except BaseException:
        _stop_daemon(daemon)
        raise
    if r is None:
        _stop_daemon(daemon)
        log = log_copy(work, "restore.log", dump.with_name(f"{dump.name}.restore.log"))
        raise RestoreError(f"VE {ctid}: CRIU's restore did not finish within {timeout:.0f} s "
                           "and was killed" + (" (is the source's page server gone?)"
                                               if daemon is not None else ""),
                           hint=f"the VE stays stopped; CRIU's log: {log}; a slow host "
                                f"may need more time: {TIMEOUT_ENV}=SECONDS")
    if r != 0:
        _stop_daemon(daemon)
        log = log_copy(work, "restore.log", dump.with_name(f"{dump.name}.restore.log"))
        why = _not_started(log) if r == NOT_STARTED else None
        if why is not None:
            raise RestoreError(f"VE {ctid}: CRIU's restore did not start: {why}",
                               hint=f"the VE stays stopped; this is the last line of {log}")
        raise RestoreError(f"VE {ctid}: CRIU could not restore it "
                           f"({criu_mod.errors_of(log) or 'see its log'})",
                           hint=f"the VE stays stopped; CRIU's log: {log}")
    pid = int((work / "init.pid").read_text().split()[0])
    if leaves and extra.procs:
        criuve.regroup(leaves[0], cg.procs(str(ctid)), extra.procs)
    try:
        if addrs:
            net.attach_restored(hif, addrs)
        state.write_pidfile(rt.paths.pidfile(ctid), pid)
        if daemon is not None:
            daemon.arm()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        state.wait_exit(pid, 10)
        _stop_daemon(daemon)
        raise
    return pid, daemon


def _stop_daemon(daemon: lazyguard.Guard | None) -> None:
    if daemon is not None and daemon.poll() is None:
        daemon.stand_down()


def _console_stand_in(stage: Path, ids: Any) -> int:
    """In the restoring process: a terminal for the VE's processes that had the
    console open, from a devpts instance of its own (never the host's), its slave
    the VE root's.  Its master goes with CRIU when the restore is done: those
    processes see a hang-up, as on a console whose terminal went away."""
    import fcntl
    import struct

    from vzpkg.runtime import libc
    where = stage / "console-pts"
    where.mkdir(mode=0o700, exist_ok=True)
    libc.mount("devpts", str(where), "devpts", libc.MS_NOSUID | libc.MS_NOEXEC,
               "newinstance,ptmxmode=0600,mode=620")
    master = os.open(str(where / "ptmx"), os.O_RDWR | os.O_NOCTTY)
    fcntl.ioctl(master, ns.TIOCSPTLCK, struct.pack("i", 0))
    n = struct.unpack("I", fcntl.ioctl(master, ns.TIOCGPTN, b"\0" * 4))[0]
    slave = os.open(str(where / str(n)), os.O_RDWR | os.O_NOCTTY)
    os.fchown(slave, ids.base, ids.base + 5)
    os.set_inheritable(master, True)
    os.set_inheritable(slave, True)
    return slave


TIMEOUT_ENV = "VZCTL_RESTORE_TIMEOUT"


def restore_timeout(work: Path, *, lazy: bool) -> float:
    """How long CRIU's restore may take before it is taken as hung (seconds):
    $VZCTL_RESTORE_TIMEOUT, else 2 minutes plus the memory images read at 10 MB/s
    (far slower than any disk; a lazy restore reads none of them)."""
    with contextlib.suppress(KeyError, ValueError):
        value = float(os.environ[TIMEOUT_ENV])
        if value > 0:
            return value
    pages = 0 if lazy else sum(f.stat().st_size for f in work.glob("pages-*.img"))
    return 120.0 + pages / 10e6


def wait_bounded(pid: int, timeout: float) -> int | None:
    """Wait for child *pid* at most *timeout* seconds: its exit status (128 if a
    signal ended it), or None if it still ran (it is then killed and reaped)."""
    fd = os.pidfd_open(pid)
    try:
        ready = select.select([fd], [], [], timeout)[0]
    finally:
        os.close(fd)
    if not ready:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return None
    _, status = os.waitpid(pid, 0)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128


def _run_in_ve_context(rt: Runtime, ctid: int, ids: Any, stage: Path,
                       criu: criu_mod.Criu, args: list[str], extra: DevExtra,
                       timeout: float) -> int | None:
    """Run CRIU from where a VE's init starts: in the VE's cgroup and in a mount
    namespace of its own with the VE's /dev staged (the restored processes inherit
    the cgroup).  Not in a cgroup namespace of the VE's: one made here would belong
    to the host's user namespace, and the VE's root (and vzctl exec, which joins
    as the VE's root) could not enter it; a restored VE shares the host's cgroup
    namespace, and sees its own cgroup2 subtree at /sys/fs/cgroup as before.
    CRIU's exit status, or None if it ran past *timeout* seconds (then it was killed:
    a restore whose page server died once waited there for ever).

    CRIU's log (``restore.log`` in its ``-D`` directory, a host path) is opened
    here, before the child joins the VE's cgroup and makes its mount namespace: the
    child's output goes there, and so does, as one line (:data:`PRE_EXEC`), why the
    child failed if it did before CRIU ran (then it exits :data:`NOT_STARTED`)."""
    out = os.open(Path(args[args.index("-D") + 1]) / "restore.log",
                  os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
                  0o644)
    try:
        pid = os.fork()
        if pid == 0:
            _criu_child(rt, ctid, ids, stage, criu, args, extra, out)
    finally:
        os.close(out)
    return wait_bounded(pid, timeout)     # None: hung (a page server gone), killed


PRE_EXEC = "Error (vzctl, before CRIU ran): "
NOT_STARTED = 127


def _criu_child(rt: Runtime, ctid: int, ids: Any, stage: Path, criu: criu_mod.Criu,
                args: list[str], extra: DevExtra, out: int) -> NoReturn:
    """The child of :func:`_run_in_ve_context`: never returns (CRIU, or an exit)."""
    step = "joining the VE's cgroup"
    try:
        rt.cgroups.attach(str(ctid), 0)
        from vzpkg.runtime import libc
        step = "making a mount namespace"
        libc.unshare(libc.CLONE_NEWNS)
        libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
        step = "staging the VE's /dev"
        ns._stage_dev(stage / "dev", ids)
        for name in extra.dirs:     # mount points the VE made in its /dev
            (stage / "dev" / name).mkdir(mode=0o755, exist_ok=True)
            os.chown(stage / "dev" / name, ids.base, ids.base)
        if extra.systemd:           # journald's, made once at its start
            os.symlink("/run/systemd/journal/dev-log", stage / "dev" / "log")
            os.lchown(stage / "dev" / "log", ids.base, ids.base)
        step = "redirecting CRIU's input and output"
        devnull = os.open("/dev/null", os.O_RDWR)
        os.set_inheritable(devnull, True)
        os.dup2(devnull, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        if extra.ttys:
            step = "making the console's stand-in"
            slave = _console_stand_in(stage, ids)
            for key in extra.ttys:
                args = [*args, "--inherit-fd", f"fd[{slave}]:{key}"]
        step = f"running {criu.argv[0]}"
        os.execv(criu.argv[0], [*criu.argv, *args])
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            what = " ".join(f"{step}: {type(exc).__name__}: {exc}".split("\n"))
            os.write(out, f"{PRE_EXEC}{what}\n".encode(errors="replace"))
    os._exit(NOT_STARTED)


def _not_started(log: Path) -> str | None:
    """Why the restore's child failed before CRIU ran (its line in *log*), or None."""
    with contextlib.suppress(OSError):
        lines = log.read_text(errors="replace").splitlines()
        for line in reversed(lines):
            if line.startswith(PRE_EXEC):
                return line[len(PRE_EXEC):]
    return None
