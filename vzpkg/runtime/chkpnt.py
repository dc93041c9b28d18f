"""Checkpoint and restore of a whole VE through CRIU (vzctl chkpnt / restore).

``chkpnt`` freezes the VE's processes, saves their whole state (memory, open
files, TCP connections with ``--tcp-established``, the network namespace's
addresses and routes, the mount namespace) to a dump file (:mod:`dumpfile`) and
stops the VE: its network, mount and cgroup go, as with ``vzctl stop``.
``restore`` checks the dump file first (a changed or truncated one is refused
before anything is touched), then sets up what vzctl start sets up (the cgroup
with the VE's limits, the mounted root), lets CRIU re-create the processes, and
puts the host end of the VE's network back.

Three parts of a VE are not CRIU's to save, and are made again as at start: the
VE's /dev (a tmpfs whose device nodes a user namespace cannot make; CRIU binds
the one vzctl stages), its cgroup2 view (a bind of the VE's delegated leaf) and
the host end of its veth pair.  Only VEs in a user namespace of their own
(VE_USERNS=yes, the default) are checkpointed.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vzpkg.core.errors import ChkpntError, RestoreError, VeNotRunningError, VeRunningError
from vzpkg.runtime import criu as criu_mod
from vzpkg.runtime import dumpfile, layout, lazy, lazyguard, lxcfs, net, ns, state
from vzpkg.runtime.derived import addrs_of, ids_of, layout_of
from vzpkg.runtime.ve import shutdown_signal

if TYPE_CHECKING:
    from vzpkg.runtime.ve import Runtime

DUMP_DIR = "dump"
EXT_DEV = "vzdev"
EXT_CG = "vzcg"
EXT_CONSOLE = "vzconsole"


def _lxcfs_key(rel: str) -> str:
    return "vzlxcfs-" + rel.replace("/", "-")


def _lxcfs_dump_externals(pid: int) -> list[str]:
    """lxcfs's files bound over the VE's /proc and /sys entries (lxcfs.FILES) are the
    host's FUSE mount, not the VE's: CRIU is told they are external, keyed by name."""
    try:
        with open(f"/proc/{pid}/mountinfo", encoding="utf-8", errors="replace") as f:
            points = {line.split()[4] for line in f if len(line.split()) > 4}
    except OSError:
        return []
    return [a for rel in lxcfs.FILES if "/" + rel in points
            for a in ("--external", f"mnt[/{rel}]:{_lxcfs_key(rel)}")]


def _lxcfs_restore_externals() -> list[str]:
    """Where each lxcfs key of a dump is bound again: lxcfs's file when lxcfs runs,
    else the host's own entry (as a VE started without lxcfs sees it)."""
    where = lxcfs.find()
    out: list[str] = []
    for rel in lxcfs.FILES:
        src = where / rel if where is not None else Path("/") / rel
        out += ["--external", f"mnt[{_lxcfs_key(rel)}]:{src}"]
    return out


def default_dumpfile(rt: Runtime, ctid: int) -> Path:
    """OpenVZ's place: DUMPDIR (default VZ_ROOT/dump) / Dump.CTID."""
    d = rt.global_conf().get("DUMPDIR") or str(rt.paths.root / DUMP_DIR)
    return Path(d) / f"Dump.{ctid}"


def _work(rt: Runtime, ctid: int, what: str) -> Path:
    """A fresh, private directory for CRIU's images of VE *ctid*."""
    base = rt.paths.root / DUMP_DIR
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    work = base / f".{what}.{ctid}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    work.chmod(0o711)     # CRIU opens some images as the VE's root (its parent is 0700)
    return work


def _log_copy(work: Path, log: str, dest: Path) -> Path:
    with contextlib.suppress(OSError):
        shutil.copyfile(work / log, dest)
    return dest


def chkpnt(rt: Runtime, ctid: int, dump: Path | None = None, *, tidy: bool = True,
           as_dir: bool = False) -> tuple[Path, float]:
    """Dump VE *ctid* to *dump* and stop it; (the dump file, seconds the VE was
    frozen until CRIU had its state).  Without *tidy* the stopped VE's network,
    mount and cgroup are left for the event helper (or the next vzctl command on
    the VE) to undo: a migration does not wait for that inside its freeze."""
    out, frozen, _ = _chkpnt(rt, ctid, dump or default_dumpfile(rt, ctid), tidy=tidy,
                             as_dir=as_dir, pages=None)
    return out, frozen


@dataclass
class LazyDump:
    """A dump without the VE's memory (:mod:`lazy`): CRIU still runs, serving the
    pages from the frozen processes on its socket until the restore has them all;
    then it ends and the processes are killed."""

    dump: Path                          # the images (a dump directory), sealed
    frozen: float                       # seconds until the images were written
    proc: subprocess.Popen[bytes]       # CRIU, now the page server
    log: Path
    pipe_max: bool = False              # fs.pipe-max-size to give back at the end

    def wait(self, timeout: float | None = None) -> int:
        """CRIU's exit status, once the page server is done."""
        code = self.proc.wait(timeout)
        lazy.put_pipe_max(self.pipe_max)
        self.pipe_max = False
        return code


def chkpnt_lazy(rt: Runtime, ctid: int, dump: Path, pages: socket.socket) -> LazyDump:
    """Freeze VE *ctid* and write its images to the dump directory *dump*, all but
    its memory, which CRIU then serves on *pages* (one end of a stream socket; a
    ``criu lazy-pages`` daemon reads the other end).  Returns once the images are
    written; the VE's processes stay frozen until the page server ends."""
    _, _, lazy_dump = _chkpnt(rt, ctid, dump, tidy=False, as_dir=True, pages=pages)
    assert lazy_dump is not None
    return lazy_dump


def _chkpnt(rt: Runtime, ctid: int, dump: Path, *, tidy: bool, as_dir: bool,
            pages: socket.socket | None) -> tuple[Path, float, LazyDump | None]:
    with rt.locked(ctid):
        cfg = rt.config(ctid)
        pid = state.running_pid(rt.paths.pidfile(ctid))
        if pid is None:
            raise VeNotRunningError(f"VE {ctid} is not running: there is nothing to "
                                    "checkpoint", hint=f"start it: vzctl start {ctid}")
        ids = ids_of(cfg)
        if ids is None:
            raise ChkpntError(f"VE {ctid} runs without a user namespace "
                              "(VE_USERNS=no); only VEs in a user namespace of their "
                              "own are checkpointed",
                              hint="recreate it with --userns yes")
        criu = criu_mod.find()
        dump.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        work = _work(rt, ctid, "chkpnt")
        owner = criu_mod.ns_owner(pid)
        if owner and criu_mod.has_cap(criu_mod.CAP_SYS_RESOURCE):
            owner = 0
        args = ["dump", "-t", str(pid), "-D", str(work), "-o", "dump.log", "-v4",
                "--tcp-established", "--manage-cgroups=ignore",
                "--external", f"mnt[/dev]:{EXT_DEV}",
                "--external", f"mnt[/sys/fs/cgroup]:{EXT_CG}",
                "--external", f"mnt[/dev/console]:{EXT_CONSOLE}",
                *_lxcfs_dump_externals(pid)]
        ttys = _console_ttys(pid, rt.cgroups.procs(str(ctid)))
        dev_dirs = _dev_mountpoints(pid)
        leaves = rt.cgroups.v2_leaves(str(ctid))
        cg_tree, cg_procs = (_cgroup_tree(leaves[0], rt.cgroups.procs(str(ctid)))
                             if leaves else ([], {}))
        systemd = shutdown_signal(pid) != signal.SIGTERM
        for key in ttys:
            args += ["--external", key]
        if owner:
            args.append("--unprivileged")
        t0 = time.monotonic()
        proc = None
        lazy_log = dump.with_name(f"{dump.name}.log")
        pipe_max = False
        if pages is None:
            r = criu.run(args, owner=owner)
            code, stderr = r.returncode, r.stderr
        else:
            # the images are all written once CRIU says so on the status pipe; the
            # log goes beside the dump, since CRIU writes to it until it ends
            lazy_log.unlink(missing_ok=True)
            st_r, st_w = os.pipe()
            args[args.index("-o") + 1] = str(lazy_log)
            args += ["--lazy-pages", "--ps-socket", str(pages.fileno()),
                     "--status-fd", str(st_w)]
            pipe_max = lazy.raise_pipe_max()
            try:
                proc = criu.popen(args, owner=owner, pass_fds=(pages.fileno(), st_w))
            except BaseException:
                lazy.put_pipe_max(pipe_max)
                raise
            finally:
                os.close(st_w)
            code, stderr = (0 if lazy.read_status(st_r) else proc.wait() or 1), ""
            if code != 0:
                lazy.put_pipe_max(pipe_max)
        frozen = time.monotonic() - t0
        if code != 0:
            log = (_log_copy(work, "dump.log", dump.with_name(f"{dump.name}.log"))
                   if pages is None else lazy_log)
            shutil.rmtree(work, ignore_errors=True)
            alive = state.running_pid(rt.paths.pidfile(ctid)) is not None
            why = criu_mod.errors_of(log) or stderr.strip()
            raise ChkpntError(
                f"VE {ctid}: CRIU could not dump it ({why})",
                hint=f"the VE {'is still running' if alive else 'stopped'}; "
                     f"CRIU's log: {log}")
        meta = {"ctid": ctid, "criu": criu.version, "ttys": ttys, "dev_dirs": dev_dirs,
                "systemd": systemd, "cgroups": cg_tree, "cgroup_procs": cg_procs,
                "ve_idmap": cfg.get("VE_IDMAP") or "",
                "ip_address": cfg.get("IP_ADDRESS") or ""}
        try:
            if as_dir:
                dumpfile.seal_dir(work, meta)
                shutil.rmtree(dump, ignore_errors=True)
                os.replace(work, dump)
            else:
                dumpfile.pack(work, dump, meta)
        except OSError as exc:
            if proc is not None:    # CRIU lets the processes go (their network may
                proc.kill()         # stay locked: stop and start the VE)
                lazy.put_pipe_max(pipe_max)
                proc.wait()
            raise ChkpntError(f"VE {ctid}: cannot write the dump file {dump}: "
                              f"{exc.strerror}",
                              hint=f"CRIU's images are kept in {work}; the VE stopped"
                              ) from None
        shutil.rmtree(work, ignore_errors=True)
        if proc is not None:
            return dump, frozen, LazyDump(dump, frozen, proc, lazy_log, pipe_max)
        state.wait_exit(pid, 10)
        if tidy:
            rt.cleanup(ctid)    # network, mount, cgroup, pid file: as vzctl stop
        return dump, frozen, None


@dataclass(frozen=True)
class _DevExtra:
    """What a restored VE's fresh /dev needs beyond the standard set."""

    ttys: list[str]       # CRIU's keys of the console terminal (now /dev/null)
    dirs: list[str]       # mount points the VE made directly in /dev (mqueue, ...)
    systemd: bool         # its init is systemd: /dev/log leads to journald
    cgroups: list[str]    # the VE's own cgroup2 groups below its leaf (systemd's)
    procs: dict[str, str]  # the VE's pid (in the VE) -> its group, relative


def _relpath(p: object) -> bool:
    return isinstance(p, str) and bool(p) and all(_plain(c) for c in p.split("/"))


def _regroup(leaf: Path, procs: list[int], where: dict[str, str]) -> None:
    """Put each restored process back in the group of the VE's own it was in."""
    for pid in procs:
        with contextlib.suppress(OSError, StopIteration):
            status = Path(f"/proc/{pid}/status").read_text()
            nspid = next(ln for ln in status.splitlines() if ln.startswith("NSpid:")
                         ).split()[-1]
            rel = where.get(nspid)
            if rel:
                (leaf / rel / "cgroup.procs").write_text(str(pid))


def _cgroup_tree(leaf: Path, procs: list[int]) -> tuple[list[str], dict[str, str]]:
    """The groups the VE made below its cgroup2 leaf (kernel directories, walked on
    the host's cgroup2 file system), and which group each VE process is in (by its
    pid in the VE, which CRIU keeps)."""
    tree = sorted(str(d.relative_to(leaf)) for d in leaf.rglob("*")
                  if d.is_dir() and not d.is_symlink())
    where: dict[str, str] = {}
    prefix = "0::/" + str(leaf.relative_to(_cg2_mount(leaf)))
    for pid in procs:
        with contextlib.suppress(OSError, ValueError, IndexError):
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
            line = next(ln for ln in lines if ln.startswith("0::"))
            status = Path(f"/proc/{pid}/status").read_text()
            nspid = next(ln for ln in status.splitlines() if ln.startswith("NSpid:")
                         ).split()[-1]
            rel = line[len(prefix):].strip("/") if line.startswith(prefix) else ""
            if rel:
                where[nspid] = rel
    return tree, where


def _cg2_mount(path: Path) -> Path:
    """The cgroup2 mount *path* is in (/sys/fs/cgroup or /sys/fs/cgroup/unified)."""
    for cand in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")):
        if path.is_relative_to(cand) and (cand / "cgroup.procs").exists():
            return cand
    return Path("/sys/fs/cgroup")


def _plain(name: object) -> bool:
    return (isinstance(name, str) and bool(name) and "/" not in name
            and name not in (".", "..") and len(name) < 64)


def _dev_mountpoints(pid: int) -> list[str]:
    """Names of the mounts directly in the VE's /dev other than vzctl's own, from
    the kernel's mountinfo of its init (mqueue, hugepages under systemd)."""
    names: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/mountinfo").read_text(errors="replace").splitlines():
            fields = line.split()
            if len(fields) > 4 and fields[4].startswith("/dev/"):
                name = fields[4][5:].encode().decode("unicode_escape")
                if _plain(name) and name not in ("console", "pts", "shm"):
                    names.add(name)
    return sorted(names)


def _console_ttys(pid: int, procs: list[int]) -> list[str]:
    """CRIU's names (``tty[RDEV:DEV]``) of the VE's console terminal, as its
    processes hold it: pty 0 of the VE's own devpts, made by its init at start,
    whose master the event helper holds outside the VE (CRIU cannot dump a pty
    without its master; it is marked external, and a restored VE gets /dev/null
    in its place).  Found through the processes' open files (the kernel's own
    links in /proc, never a path in the VE)."""
    try:
        ns = os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return []
    keys: set[str] = set()
    for entry in map(str, procs or [pid]):
        try:
            if os.stat(f"/proc/{entry}/ns/pid").st_ino != ns:
                continue
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                st = os.stat(f"/proc/{entry}/fd/{fd}")
                if 136 <= os.major(st.st_rdev) <= 143 and os.minor(st.st_rdev) == 0:
                    keys.add(f"tty[{st.st_rdev:x}:{st.st_dev:x}]")
    return sorted(keys)


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
        work = dump if in_place else _work(rt, ctid, "restore")
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
                extra = _DevExtra([str(t) for t in head.get("ttys") or []],
                                  [d for d in head.get("dev_dirs") or [] if _plain(d)],
                                  bool(head.get("systemd")),
                                  [d for d in head.get("cgroups") or [] if _relpath(d)],
                                  {str(k): str(v) for k, v in
                                   (head.get("cgroup_procs") or {}).items()
                                   if str(k).isdigit() and _relpath(v)})
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
             dump: Path, extra: _DevExtra, pages: _Lazy | None = None
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
            *_lxcfs_restore_externals()]
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
        log = _log_copy(work, "restore.log", dump.with_name(f"{dump.name}.restore.log"))
        raise RestoreError(f"VE {ctid}: CRIU's restore did not finish within {timeout:.0f} s "
                           "and was killed" + (" (is the source's page server gone?)"
                                               if daemon is not None else ""),
                           hint=f"the VE stays stopped; CRIU's log: {log}; a slow host "
                                f"may need more time: {TIMEOUT_ENV}=SECONDS")
    if r != 0:
        _stop_daemon(daemon)
        log = _log_copy(work, "restore.log", dump.with_name(f"{dump.name}.restore.log"))
        raise RestoreError(f"VE {ctid}: CRIU could not restore it "
                           f"({criu_mod.errors_of(log) or 'see its log'})",
                           hint=f"the VE stays stopped; CRIU's log: {log}")
    pid = int((work / "init.pid").read_text().split()[0])
    if leaves and extra.procs:
        _regroup(leaves[0], cg.procs(str(ctid)), extra.procs)
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
                       criu: criu_mod.Criu, args: list[str], extra: _DevExtra,
                       timeout: float) -> int | None:
    """Run CRIU from where a VE's init starts: in the VE's cgroup and in a mount
    namespace of its own with the VE's /dev staged (the restored processes inherit
    the cgroup).  Not in a cgroup namespace of the VE's: one made here would belong
    to the host's user namespace, and the VE's root (and vzctl exec, which joins
    as the VE's root) could not enter it; a restored VE shares the host's cgroup
    namespace, and sees its own cgroup2 subtree at /sys/fs/cgroup as before.
    CRIU's exit status, or None if it ran past *timeout* seconds (then it was killed:
    a restore whose page server died once waited there for ever)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            rt.cgroups.attach(str(ctid), 0)
            from vzpkg.runtime import libc
            libc.unshare(libc.CLONE_NEWNS)
            libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
            ns._stage_dev(stage / "dev", ids)
            for name in extra.dirs:     # mount points the VE made in its /dev
                (stage / "dev" / name).mkdir(mode=0o755, exist_ok=True)
                os.chown(stage / "dev" / name, ids.base, ids.base)
            if extra.systemd:           # journald's, made once at its start
                os.symlink("/run/systemd/journal/dev-log", stage / "dev" / "log")
                os.lchown(stage / "dev" / "log", ids.base, ids.base)
            devnull = os.open("/dev/null", os.O_RDWR)
            os.set_inheritable(devnull, True)
            os.dup2(devnull, 0)
            out = os.open(str(Path(args[args.index("-D") + 1]) / "restore.log"),
                          os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
            os.dup2(out, 1)
            os.dup2(out, 2)
            if extra.ttys:
                slave = _console_stand_in(stage, ids)
                for key in extra.ttys:
                    args = [*args, "--inherit-fd", f"fd[{slave}]:{key}"]
            os.execv(criu.argv[0], [*criu.argv, *args])
        except BaseException:
            code = 127
        os._exit(code)
    return wait_bounded(pid, timeout)     # None: hung (a page server gone), killed
