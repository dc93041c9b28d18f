"""The VE lifecycle: create, start, stop, exec, set, destroy, status, list.

Every operation that changes a VE holds its lock (``VZ_ROOT/lock/CTID.lck``)
and leaves either the new state or the old one, never half of each.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from vzpkg.core.errors import (
    ConfigError,
    ExecError,
    NoTemplateError,
    NoVeConfigError,
    UsageError,
    VeConfigError,
    VeError,
    VeExistsError,
    VeLockedError,
    VeNotRunningError,
    VeRunningError,
)
from vzpkg.core.settings import Settings
from vzpkg.runtime import (
    diskresize,
    dists,
    idmap,
    iolimit,
    join,
    layout,
    lxcfs,
    net,
    netfilter,
    ns,
    params,
    quota,
    state,
)
from vzpkg.runtime.caches import CacheRef, find_cache
from vzpkg.runtime.cgroups import Cgroups, detect
from vzpkg.runtime.config import (
    VeConfig,
    install_defaults,
    lenient_values,
    load_global,
    load_sample,
)
from vzpkg.runtime.derived import addrs_of, dist_setup, ids_of, layout_of, mount_ids_of
from vzpkg.runtime.layout import Layout
from vzpkg.runtime.paths import VzPaths


class Status(StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"
    MOUNTED = "mounted"
    DELETED = "deleted"


@dataclass(frozen=True)
class VeState:
    ctid: int
    exists: bool
    mounted: bool
    pid: int | None

    @property
    def running(self) -> bool:
        return self.pid is not None

    @property
    def status(self) -> Status:
        if not self.exists:
            return Status.DELETED
        if self.running:
            return Status.RUNNING
        return Status.MOUNTED if self.mounted else Status.STOPPED

    def line(self) -> str:
        return (f"CTID {self.ctid} {'exist' if self.exists else 'deleted'} "
                f"{'mounted' if self.mounted else 'unmounted'} "
                f"{'running' if self.running else 'down'}")


class Runtime:
    """All VEs under one VZ_ROOT."""

    def __init__(self, paths: VzPaths, cache_dirs: Sequence[Path] = (),
                 cgroups: Cgroups | None = None, settings: Settings | None = None,
                 *, wait_lock: bool = True) -> None:
        self.paths = paths
        self.cache_dirs = [*cache_dirs, paths.template_cache]
        self._cgroups = cgroups
        self.settings = settings  # when given, a missing cache is pulled from a mirror
        # False: a VE another vzctl holds is VeLockedError at once (vzctl, as OpenVZ's)
        self.wait_lock = wait_lock

    @property
    def cgroups(self) -> Cgroups:
        if self._cgroups is None:
            self._cgroups = detect(prefix=self.paths.cgroup_prefix)
        return self._cgroups

    # -- helpers ---------------------------------------------------------
    def ensure(self) -> None:
        self.paths.ensure()
        install_defaults(self.paths.root)

    def global_conf(self) -> VeConfig:
        return load_global(self.paths.root)

    @contextlib.contextmanager
    def locked(self, ctid: int) -> Iterator[None]:
        """Hold VE *ctid*'s lock (``lock/CTID.lck``, which then names this pid).  When
        another process holds it: wait, or with ``wait_lock=False`` VeLockedError."""
        self.ensure()
        fd = os.open(self.paths.lockfile(ctid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not self.wait_lock:
                    raise _locked_error(ctid, fd) from None
                fcntl.flock(fd, fcntl.LOCK_EX)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)

    def check_unlocked(self, ctid: int) -> None:
        """VeLockedError if another process holds VE *ctid*'s lock and this runtime
        does not wait for locks (before handing a start to the event helper)."""
        if self.wait_lock or not self.paths.lockfile(ctid).exists():
            return
        with self.locked(ctid):
            pass

    def config(self, ctid: int) -> VeConfig:
        conf = self.paths.conf(ctid)
        if not conf.exists():
            raise NoVeConfigError(f"VE {ctid} does not exist (no {conf})",
                                  hint=f"create it: vzctl create {ctid} --ostemplate NAME")
        try:
            return VeConfig.load(conf)
        except ConfigError as exc:      # this VE only: VeConfigError names it
            raise _unusable(ctid, conf, exc) from None

    def state(self, ctid: int) -> VeState:
        return VeState(ctid, self.paths.conf(ctid).exists(),
                       layout.is_mounted(self.paths.ve_root(ctid)),
                       state.running_pid(self.paths.pidfile(ctid)))

    def _require_running(self, ctid: int) -> int:
        self.config(ctid)
        pid = state.running_pid(self.paths.pidfile(ctid))
        if pid is None:
            raise VeNotRunningError(f"VE {ctid} is not running",
                                    hint=f"start it: vzctl start {ctid}")
        return pid

    # -- create ------------------------------------------------------------
    def find_cache(self, name: str) -> CacheRef:
        ref = find_cache(name, self.cache_dirs)
        if ref is None and self.settings is not None:
            ref = self._pull(name)
        if ref is None:
            where = ", ".join(str(d) for d in self.cache_dirs)
            raise NoTemplateError(f"no cache named {name!r} in {where}",
                          hint=f"build it (vzpkg build {name}), pull it (vzpkg pull {name}), "
                               "or point --cache-dir / $VZPKG_CACHE_DIR at it")
        return ref

    def _pull(self, name: str) -> CacheRef | None:
        """Fetch a missing cache from the configured mirrors (verified by the mirror
        code); None when no mirror is configured at all."""
        from vzpkg.mirror import pull_cache
        assert self.settings is not None
        try:
            pull_cache(name, self.settings)
        except ConfigError:  # no mirror or trusted key configured: not an error here
            return None
        return find_cache(name, [self.settings.cache_dir])

    def create(self, ctid: int, ostemplate: str, *, config: str | None = None,
               hostname: str | None = None, ipadd: Sequence[str] = (),
               layout_name: str | None = None, userns: bool | None = None,
               idmap_mode: str | None = None,
               values: dict[str, str] | None = None) -> list[str]:
        """Make VE *ctid* from cache *ostemplate*; notes for the user (the log).
        *idmap_mode* (else VE_IDMAP_MODE of the sample and vz.conf, else auto): how
        a user-namespaced VE's files get its ids (see :meth:`_idmap_mode`).  *values*
        are further CTID.conf values from the command line (the disk limits:
        DISKSPACE, DISKINODES, QUOTATIME)."""
        addrs = [net.parse_ip(a) for a in ipadd]
        notes: list[str] = []
        with self.locked(ctid), state.flocked(self.paths.root / "lock" / "ids.lck"):
            net.check_free(self.paths, ctid, addrs)
            conf_path = self.paths.conf(ctid)
            if conf_path.exists():
                raise VeExistsError(f"VE {ctid} already exists ({conf_path})",
                                    hint=f"pick another CTID, or vzctl destroy {ctid} first")
            if os.path.lexists(self.paths.private(ctid)):
                raise VeExistsError(f"VE {ctid}: its private area {self.paths.private(ctid)} "
                                    "already exists, with no CTID.conf",
                                    hint="remove that directory, or pick another CTID")
            g = self.global_conf()
            lay_s = layout_name or g.get("VE_LAYOUT") or "plain"
            try:
                lay = Layout(lay_s)
            except ValueError:
                raise UsageError(f"unknown layout {lay_s!r}",
                                 hint="use --layout plain or --layout overlay") from None
            cfg = load_sample(self.paths.root, config or g.get("CONFIGFILE") or "basic")
            cache = self.find_cache(ostemplate)
            vals = {"OSTEMPLATE": cache.name, "VE_LAYOUT": str(lay),
                    "VE_ROOT": str(self.paths.ve_root(ctid)),
                    "VE_PRIVATE": str(self.paths.private(ctid))}
            if hostname:
                vals["HOSTNAME"] = hostname
            if userns is None:
                userns = (cfg.get("VE_USERNS") or g.get("VE_USERNS") or "yes") != "no"
            vals["VE_USERNS"] = "yes" if userns else "no"
            shift: idmap.IdRange | None = None
            if userns:
                mode, why = self._idmap_mode(
                    idmap_mode or cfg.get("VE_IDMAP_MODE") or g.get("VE_IDMAP_MODE")
                    or "auto", lay)
                ids = self._allocate_ids(g)
                vals["VE_IDMAP"] = str(ids)
                vals["VE_IDMAP_MODE"] = mode
                shift = ids if mode == "shift" else None
            if addrs:
                vals["IP_ADDRESS"] = " ".join(
                    str(a.ip) if a.network.prefixlen == a.max_prefixlen else a.with_prefixlen
                    for a in addrs)
            vals.update(values or {})
            new_cfg = cfg.with_values(vals)  # checks the values before anything is made
            quota.check_values(vals)
            done = layout.create(self.paths, ctid, cache, lay, shift,
                                 quota.of_config(new_cfg.get))
            try:
                new_cfg.save(conf_path)
            except BaseException:
                layout.destroy(self.paths, ctid, lay)
                conf_path.unlink(missing_ok=True)
                raise
            if done is not None and shift is not None:
                extra = [f"{n} {what}" for n, what in ((done.acls, "ACLs"),
                                                       (done.caps, "file capabilities"),
                                                       (done.outside, "ids outside "
                                                        "0..65535 made nobody")) if n]
                notes.append(f"VE {ctid}: shifted the owners of {done.files} files to host "
                             f"ids {shift} on disk{' (' + ', '.join(extra) + ')' if extra else ''}"
                             f", because {why}; its root is a plain bind mount "
                             '(VE_IDMAP_MODE="shift")')
        return notes

    def _idmap_mode(self, want: str, lay: Layout) -> tuple[str, str]:
        """How a new user-namespaced VE's files get its ids, asked for as *want*:
        ("mount" or "shift", why shift).  auto is mount where the file system of the
        private areas takes an idmapped mount (tried), else shift; mount there is an
        error; an overlay VE cannot be shifted (its lower layer is shared)."""
        if want not in ("auto", "mount", "shift"):
            raise UsageError(f"unknown id mapping mode {want!r} (VE_IDMAP_MODE)",
                             hint="use auto, mount or shift")
        where = self.paths.private_base
        where.mkdir(mode=0o700, parents=True, exist_ok=True)
        if want == "shift":
            if lay is not Layout.PLAIN:
                raise UsageError("--idmap-mode shift (VE_IDMAP_MODE) works for the plain "
                                 "layout only: an overlay VE's lower layer is shared",
                                 hint="create it with --layout plain")
            return "shift", "VE_IDMAP_MODE is shift"
        if idmap.supported(where):
            return "mount", ""
        why = (f"the file system of {where} takes no idmapped mounts, which a VE in a "
               "user namespace needs to keep its files as the cache has them")
        if want == "mount" or lay is not Layout.PLAIN:
            raise VeError(why + ("" if want == "mount" else
                                 "; an overlay VE cannot have them shifted instead, its "
                                 "lower layer being shared"),
                          hint="create it with --layout plain (its files are then shifted "
                               "to its ids at create), put VZ_ROOT on ext4, xfs, btrfs or "
                               "tmpfs, or use --userns no (the older, weaker mode)")
        return "shift", why

    def _allocate_ids(self, g: VeConfig) -> idmap.IdRange:
        """A host id range no other VE of this root has (under the root's id lock,
        held by the caller's create until CTID.conf names the range)."""
        pool = idmap.IdRange.parse(g.get("VE_IDMAP_POOL") or idmap.DEFAULT_POOL,
                                   where=f"{self.paths.global_conf}: VE_IDMAP_POOL")
        used = []
        for other in self.paths.ctids():
            with contextlib.suppress(ConfigError):
                r = ids_of(VeConfig.load(self.paths.conf(other)))
                if r is not None:
                    used.append(r)
        return idmap.allocate(used, pool)

    # -- start / stop ------------------------------------------------------
    def start(self, ctid: int) -> int:
        """Start the VE; its init's host pid.  Its console leads nowhere (see
        :meth:`start_with_console`)."""
        return self.start_with_console(ctid, console=False)[0]

    def start_with_console(self, ctid: int, *, console: bool = True
                           ) -> tuple[int, int | None]:
        """Start the VE; (its init's host pid, the master of its console pty, when
        *console*): whoever holds the master reads what the VE writes to its console
        (the event helper, for ``vzctl console``)."""
        with self.locked(ctid):
            cfg = self.config(ctid)
            if state.running_pid(self.paths.pidfile(ctid)) is not None:
                raise VeRunningError(f"VE {ctid} is already running",
                                     hint=f"stop it first: vzctl stop {ctid}")
            self._cleanup(ctid)  # whatever a crashed VE left behind
            try:
                return self._start(ctid, cfg, console)
            except BaseException:
                self._cleanup(ctid)
                raise

    def _start(self, ctid: int, cfg: VeConfig, console: bool) -> tuple[int, int | None]:
        cg = self.cgroups
        cg.create(str(ctid))
        cg.apply(str(ctid), cfg.layered_on(self.global_conf()))
        iolimit.apply(cg, str(ctid), cfg, self.paths.private(ctid))   # (a hint if it can't)
        ids = ids_of(cfg)
        if ids is not None:
            cg.delegate(str(ctid), ids.base)
        if not layout.is_mounted(self.paths.ve_root(ctid)):
            diskresize.reconcile(self.paths, ctid, quota.of_config(cfg.get))
        root = layout.mount(self.paths, ctid, layout_of(cfg), mount_ids_of(cfg))
        addrs = addrs_of(cfg)
        setup = dist_setup(cfg)

        def ready(pid: int) -> None:    # pid 1 is entering its cgroup meanwhile
            net.setup(self.paths.host_ifname(ctid), pid, addrs)

        ours, theirs = (socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) if console
                        else (None, None))

        spec = ns.StartSpec(ctid=ctid, root=root, hostname=cfg.get("HOSTNAME") or None,
                            prepare=lambda: dists.apply(setup),
                            run_size=run_size(cfg.layered_on(self.global_conf())),
                            enter_cgroup=lambda: cg.attach(str(ctid), 0),
                            ids=ids, stage=self.stage(ctid) if ids else None,
                            init=INIT if ids else None,
                            console=theirs.fileno() if theirs is not None else None,
                            lxcfs=lxcfs.find())
        try:
            pid = ns.start_init(spec, ready)
        finally:
            if theirs is not None:
                theirs.close()
        master = _receive_console(ours) if ours is not None else None
        state.write_pidfile(self.paths.pidfile(ctid), pid)
        ns.wait_init_ready(pid, shutdown_signal(pid))
        return pid, master

    def _stage_path(self, ctid: int) -> Path:
        return (STAGE_DIR / self.paths.tag if self.paths.tag else STAGE_DIR) / str(ctid)

    def stage(self, ctid: int) -> Path:
        """/run/vzctl/[TAG/]CTID with the empty mount points root/ and dev/, on which a
        user-namespaced VE's root and /dev are mounted in the VE's mount namespace
        only.  It is outside VZ_ROOT, so that the VE's root can look the names up
        however closed VZ_ROOT and the directories above it are."""
        stage = self._stage_path(ctid)
        for d in (STAGE_DIR, stage.parent, stage, stage / "root", stage / "dev"):
            with contextlib.suppress(FileExistsError):
                d.mkdir(mode=0o755)
            if d.is_symlink() or not d.is_dir():
                raise VeError(f"{d} is not a directory vzctl made",
                              hint="remove it and start the VE again")
        return stage

    def wait_booted(self, ctid: int, timeout: float = 120.0) -> str:
        """Wait until the VE's init reports it is up; its state.  systemd: until
        ``systemctl is-system-running`` leaves starting/initializing (running and
        degraded are up; anything else is an error naming the failed units).  Other
        inits are up once started."""
        pid = self._require_running(ctid)
        if shutdown_signal(pid) == signal.SIGTERM:
            return "running"
        deadline = time.monotonic() + timeout
        from vzpkg.runtime.vset import capture
        while True:
            _, out = capture(self, ctid, ["/bin/systemctl", "is-system-running"], b"")
            state_ = out.strip().splitlines()[-1] if out.strip() else "unknown"
            if state_ in ("running", "degraded"):
                return state_
            if state_ not in ("starting", "initializing", "unknown") and "Failed to" not in out:
                _, failed = capture(self, ctid, ["/bin/systemctl", "--failed", "--plain",
                                                 "--no-legend"], b"")
                raise VeError(f"VE {ctid} booted to state {state_!r}",
                              hint="failed units: " + (", ".join(
                                  ln.split()[0] for ln in failed.splitlines() if ln.strip())
                                  or "none") + f"; see vzctl exec {ctid} journalctl -b")
            if time.monotonic() > deadline:
                raise VeError(f"VE {ctid} did not finish booting in {timeout:.0f} s "
                              f"(systemd says {state_!r})",
                              hint=f"see vzctl exec {ctid} systemctl list-jobs")
            if state_pid_gone(pid):
                raise VeError(f"VE {ctid} stopped while booting",
                              hint=f"see the VE's journal: vzctl start {ctid} and "
                                   "vzctl exec {ctid} journalctl -b")
            time.sleep(0.05)

    def stop(self, ctid: int, *, fast: bool = False, timeout: float | None = None) -> None:
        with self.locked(ctid):
            self.config(ctid)
            pid = state.running_pid(self.paths.pidfile(ctid))
            if pid is None:
                if self._leftovers(ctid):  # init died behind our back: tidy up
                    self._cleanup(ctid)
                    return
                raise VeNotRunningError(f"VE {ctid} is not running")
            self._stop(ctid, pid, fast=fast, timeout=timeout)

    def _leftovers(self, ctid: int) -> bool:
        return (layout.is_mounted(self.paths.ve_root(ctid))
                or self.paths.pidfile(ctid).exists()
                or bool(self.cgroups.procs(str(ctid)))
                or net.link_exists(self.paths.host_ifname(ctid)))

    def mount(self, ctid: int) -> Path:
        """Mount a stopped VE's root on VZ_ROOT/root/CTID (to work on its files)."""
        with self.locked(ctid):
            cfg = self.config(ctid)
            return layout.mount(self.paths, ctid, layout_of(cfg), mount_ids_of(cfg))

    def umount(self, ctid: int) -> None:
        with self.locked(ctid):
            self.config(ctid)
            if state.running_pid(self.paths.pidfile(ctid)) is not None:
                raise VeRunningError(f"VE {ctid} is running", hint=f"stop it: vzctl stop {ctid}")
            layout.umount(self.paths, ctid)

    def _stop(self, ctid: int, pid: int, *, fast: bool, timeout: float | None) -> None:
        if timeout is None:
            eff = self.config(ctid).layered_on(self.global_conf())
            timeout = float(eff.get_int("STOP_TIMEOUT") or 60)
        done = False
        if not fast:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, shutdown_signal(pid))
            done = state.wait_exit(pid, timeout)
        if not done:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            state.wait_exit(pid, 10)
        self._cleanup(ctid)

    def cleanup(self, ctid: int) -> None:
        """Undo what a VE whose init has ended left: processes, network, mount,
        cgroup, pid file (the caller holds the VE's lock)."""
        self._cleanup(ctid)

    def _cleanup(self, ctid: int) -> None:
        """Kill leftovers and undo network, mount, cgroup and pid file."""
        cg = self.cgroups
        if cg.procs(str(ctid)):
            cg.kill_all(str(ctid))
        net.teardown(self.paths.host_ifname(ctid))
        layout.umount(self.paths, ctid)
        cg.remove(str(ctid))
        self.paths.pidfile(ctid).unlink(missing_ok=True)
        self.paths.livefile(ctid).unlink(missing_ok=True)
        self.paths.ubcfile(ctid).unlink(missing_ok=True)
        stage = self._stage_path(ctid)
        for d in (stage / "root", stage / "dev", stage):
            with contextlib.suppress(OSError):
                d.rmdir()

    def restart(self, ctid: int) -> int:
        if self.state(ctid).running:
            self.stop(ctid)
        return self.start(ctid)

    # -- run commands --------------------------------------------------------
    def exec(self, ctid: int, argv: Sequence[str],
             stdio: tuple[int, int, int] | None = None) -> int:
        """Run *argv* in the VE; its exit status."""
        if not argv:
            raise UsageError("no command given", hint="vzctl exec CTID COMMAND [ARG...]")
        pid = self._require_running(ctid)
        if stdio is None:
            ttys = tuple(fd for fd in (0, 1, 2) if os.isatty(fd))
            if ttys:    # the caller's terminal stays here: the VE gets a pty
                from vzpkg.runtime import console
                return console.run(self, ctid, list(argv), pty=ttys)
        cg = self.cgroups
        words = list(argv)
        r, w = _report_pipe()   # says why the command could not be run
        try:
            code = join.join(join.JoinSpec(pid=pid, argv=words, stdio=stdio,
                                           func=lambda: _exec_or_report(words, w),
                                           attach=lambda p: cg.attach(str(ctid), p),
                                           userns=self.userns(ctid)))
            os.close(w)
            w = -1
            why = os.read(r, 1024).decode(errors="replace")
        except VeError as exc:
            if type(exc) is not VeError:
                raise
            raise ExecError(f"VE {ctid}: cannot run {words[0]}: {exc.message}",
                            hint=exc.hint) from None
        finally:
            for fd in (r, w):
                if fd >= 0:
                    os.close(fd)
        if why:
            raise ExecError(f"VE {ctid}: cannot run {words[0]}: {why}",
                            hint="give the full path of a program the VE has, "
                                 "e.g. /bin/ls")
        return code

    def run_shell(self, ctid: int, command: str,
                  stdio: tuple[int, int, int] | None = None) -> int:
        """Run the command line *command* with the VE's ``/bin/sh -c`` (vzctl exec and
        exec2); its exit status.  ExecError (8) only when the shell itself could not be
        run: a command the shell does not find is its status 127, as on OpenVZ."""
        try:
            return self.exec(ctid, ["/bin/sh", "-c", command], stdio)
        except ExecError as exc:
            if not exc.message.startswith(f"VE {ctid}: cannot run /bin/sh:"):
                raise
            raise ExecError(f"VE {ctid}: cannot run the command: the VE's /bin/sh "
                            f"could not be run ({exc.message.partition('/bin/sh: ')[2]})",
                            hint="vzctl exec and exec2 run COMMAND through the VE's "
                                 "/bin/sh -c; the VE needs a shell there") from None

    def userns(self, ctid: int) -> bool:
        """Whether VE *ctid* runs in a user namespace of its own."""
        return ids_of(self.config(ctid)) is not None

    def init_pid(self, ctid: int) -> int:
        return self._require_running(ctid)

    # -- set / destroy -------------------------------------------------------
    def set(self, ctid: int, values: dict[str, str], *, userpasswd: Sequence[str] = (),
            save: bool = False, saved_values: dict[str, str] | None = None) -> list[str]:
        """Change settings (CTID.conf KEY -> value; IP_ADDRESS is the whole new list);
        live on a running VE (only those given), persisted with *save* (*saved_values*
        if given: see vset.apply).  Returns notes for the user."""
        from vzpkg.runtime import vset
        return vset.apply(self, ctid, values, userpasswd=userpasswd, save=save,
                          saved_values=saved_values)

    def destroy(self, ctid: int, *, stop: bool = True) -> None:
        """Remove the VE.  A running VE is stopped first; with ``stop=False`` (vzctl
        destroy without --force, as OpenVZ's) it is refused instead."""
        with self.locked(ctid):
            conf = self.paths.conf(ctid)
            if not conf.exists() and not self.paths.private(ctid).exists():
                raise NoVeConfigError(f"VE {ctid} does not exist")
            pid = state.running_pid(self.paths.pidfile(ctid))
            if pid is not None and not stop:
                raise VeRunningError(f"VE {ctid} is running; it was not destroyed",
                                     hint=f"stop it first (vzctl stop {ctid}), or "
                                          f"vzctl destroy {ctid} --force")
            if pid is not None:
                self._stop(ctid, pid, fast=False, timeout=None)
            self._cleanup(ctid)
            lay = layout_of(self.config(ctid)) if conf.exists() else Layout.PLAIN
            layout.destroy(self.paths, ctid, lay)
            conf.unlink(missing_ok=True)
        self.paths.lockfile(ctid).unlink(missing_ok=True)
        if not self.paths.ctids():      # the root's last VE: its traffic filter goes
            netfilter.drop_unused(self.paths.tag)

    def ctids(self) -> list[int]:
        return self.paths.ctids()


INIT = "/sbin/init"   # a user-namespaced VE's init, when its tree has one
STAGE_DIR = Path("/run/vzctl")


def _receive_console(sock: socket.socket) -> int | None:
    """The console master pid 1 sent (it has exec'd by now: it is there or never)."""
    try:
        sock.settimeout(5)
        _, fds, _, _ = socket.recv_fds(sock, 16, 1)
    except OSError:
        fds = []
    finally:
        sock.close()
    if not fds:
        return None
    os.set_inheritable(fds[0], False)
    return fds[0]


def _unusable(ctid: int, conf: Path, exc: ConfigError) -> VeConfigError:
    """Why VE *ctid*'s CTID.conf *conf* cannot be used (*exc*), naming the VE."""
    lay = lenient_values(conf).get("VE_LAYOUT")
    if lay is not None and lay not in {str(x) for x in Layout}:
        return VeConfigError(
            ctid, f"VE {ctid} has VE_LAYOUT={lay!r} ({conf}), which this vzctl does not "
                  "run: only plain and overlay VEs",
            hint="it is left as it is and the other VEs are not affected; to run it here, "
                 "copy its files into a private area of its own and set "
                 'VE_LAYOUT="plain" (for ploop, from the mounted image)')
    return VeConfigError(ctid, f"VE {ctid}: {exc.message}",
                         hint=exc.hint or f"fix {conf}; the other VEs are not affected")


def _locked_error(ctid: int, fd: int) -> VeLockedError:
    """Who holds VE *ctid*'s lock, open as *fd*: its pid and command line, if known."""
    who = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int(os.pread(fd, 64, 0).split()[0])
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read(200).replace(b"\0", b" ").decode(errors="replace").strip()
        who = f" (pid {pid}: {cmd})" if cmd else f" (pid {pid})"
    return VeLockedError(f"VE {ctid} is locked by another vzctl{who}",
                         hint="wait until it is done and try again, or add --wait-lock "
                              "to wait for it")


def _report_pipe() -> tuple[int, int]:
    """A close-on-exec pipe above fds 0-2 (which the child may replace)."""
    ends = []
    for fd in os.pipe():
        ends.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3))
        os.close(fd)
    return ends[0], ends[1]


def _exec_or_report(argv: list[str], report: int) -> int:
    """In the joined, confined child: become *argv*; if that fails, say why on
    *report* (close-on-exec: a command that runs closes it unwritten)."""
    ns.close_fds_except(report)
    try:
        os.execvpe(argv[0], argv, ns.ve_env())
    except OSError as exc:
        why = ("no such command in the VE" if isinstance(exc, FileNotFoundError)
               else exc.strerror or str(exc))
        with contextlib.suppress(OSError):
            os.write(report, why.encode())
        return 127 if isinstance(exc, FileNotFoundError) else 126
    return 126  # not reached: execvpe returns only by raising


def state_pid_gone(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}")


def shutdown_signal(pid: int) -> int:
    """What asks the VE's init *pid* for a clean shutdown: SIGRTMIN+3 for systemd
    (its "halt"), SIGTERM for vzctl's own shell init and others."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return signal.SIGTERM
    return signal.SIGRTMIN + 3 if os.path.basename(exe) == "systemd" else signal.SIGTERM


def by_name(paths: VzPaths, name: str) -> int | None:
    """The CTID of the VE whose NAME is *name* (``vzctl set CTID --name NAME --save``)."""
    for ctid in paths.ctids():
        try:
            if VeConfig.load(paths.conf(ctid)).get("NAME") == name:
                return ctid
        except ConfigError:
            continue
    return None


def run_size(cfg: VeConfig) -> str:
    """The size of a VE's /run: a fifth of its RAM limit, at least 8 MiB, at most
    10% of the host's memory (the tmpfs is charged to the VE's memory anyway)."""
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    size = host // 10
    try:
        _, limit = params.parse_barrier_limit(cfg.get("PHYSPAGES") or "", pages=True)
    except (params.ParamError, ValueError):
        limit = params.UNLIMITED
    if 0 < limit < params.UNLIMITED:
        size = min(size, limit * params.PAGE_SIZE // 5)
    return f"size={max(size, 8 << 20)}"


