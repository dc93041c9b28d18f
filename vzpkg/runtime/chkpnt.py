"""Checkpoint of a whole VE through CRIU (vzctl chkpnt, suspend).

``chkpnt`` freezes the VE's processes, saves their whole state (memory, open
files, TCP connections with ``--tcp-established``, the network namespace's
addresses and routes, the mount namespace) to a dump file (:mod:`dumpfile`) and
stops the VE: its network, mount and cgroup go, as with ``vzctl stop``.  For a
post-copy migration, :func:`chkpnt_lazy` writes all but the memory, which CRIU
then serves to the destination (:mod:`lazy`).

What CRIU is told about the VE, and what is recorded for the restore, is
:mod:`criuve`'s; bringing the VE back is :mod:`restore`'s.  Only VEs in a user
namespace of their own (VE_USERNS=yes, the default) are checkpointed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vzpkg.core.errors import ChkpntError, VeNotRunningError
from vzpkg.runtime import criu as criu_mod
from vzpkg.runtime import criuve, dumpfile, lazy, state
from vzpkg.runtime.criuve import EXT_CG, EXT_CONSOLE, EXT_DEV
from vzpkg.runtime.derived import ids_of
from vzpkg.runtime.ve import shutdown_signal

if TYPE_CHECKING:
    from vzpkg.runtime.ve import Runtime

DUMP_DIR = "dump"


def default_dumpfile(rt: Runtime, ctid: int) -> Path:
    """OpenVZ's place: DUMPDIR (default VZ_ROOT/dump) / Dump.CTID."""
    d = rt.global_conf().get("DUMPDIR") or str(rt.paths.root / DUMP_DIR)
    return Path(d) / f"Dump.{ctid}"


def work_dir(rt: Runtime, ctid: int, what: str) -> Path:
    """A fresh, private directory for CRIU's images of VE *ctid*."""
    base = rt.paths.root / DUMP_DIR
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    work = base / f".{what}.{ctid}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    work.chmod(0o711)     # CRIU opens some images as the VE's root (its parent is 0700)
    return work


def log_copy(work: Path, log: str, dest: Path) -> Path:
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
        work = work_dir(rt, ctid, "chkpnt")
        owner = criu_mod.ns_owner(pid)
        if owner and criu_mod.has_cap(criu_mod.CAP_SYS_RESOURCE):
            owner = 0
        args = ["dump", "-t", str(pid), "-D", str(work), "-o", "dump.log", "-v4",
                "--tcp-established", "--manage-cgroups=ignore",
                "--external", f"mnt[/dev]:{EXT_DEV}",
                "--external", f"mnt[/sys/fs/cgroup]:{EXT_CG}",
                "--external", f"mnt[/dev/console]:{EXT_CONSOLE}",
                *criuve.lxcfs_dump_externals(pid)]
        ttys = criuve.console_ttys(pid, rt.cgroups.procs(str(ctid)))
        dev_dirs = criuve.dev_mountpoints(pid)
        leaves = rt.cgroups.v2_leaves(str(ctid))
        cg_tree, cg_procs = (criuve.cgroup_tree(leaves[0], rt.cgroups.procs(str(ctid)))
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
            log = (log_copy(work, "dump.log", dump.with_name(f"{dump.name}.log"))
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
