"""Moving a VE to another host (vzmigrate): rsync over ssh, then chkpnt/restore or
stop/start.

The destination runs its own vzctl (``remote_vzctl``, default ``vzctl``) with its own
VZ_ROOT (``remote_root``; when not given, the destination's default /vz, or what its
ssh environment sets).  The order keeps the VE whole at one end at every moment:

1. refuse if the destination has that CTID;
2. copy the private area while the VE runs (the bulk of the bytes);
3. online: ``vzctl chkpnt`` here (the VE freezes and stops), copy again (only what
   changed since) and the dump; offline: stop, copy again;
4. copy CTID.conf (its VE_ROOT and VE_PRIVATE made the destination's), then
   ``vzctl restore`` (online) or ``vzctl start`` there;
5. only once the VE runs there: remove it here.

When a step fails the VE is brought back here (restored from the dump, or started
again), and what was copied to the destination is removed unless ``keep_dst``.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vzpkg.core.errors import UsageError, VeError, VeExistsError
from vzpkg.runtime import chkpnt, state
from vzpkg.runtime.derived import layout_of
from vzpkg.runtime.layout import Layout
from vzpkg.runtime.ve import Runtime


class MigrateError(VeError):
    """A migration failed (the VE is back at the source)."""


@dataclass
class Remote:
    dest: str                          # [user@]host
    ssh: Sequence[str] = ()            # extra ssh options
    root: str | None = None            # the destination's VZ_ROOT
    vzctl: str = "vzctl"               # the destination's vzctl command (shell words)

    control: str | None = None         # ssh's shared connection (one handshake)

    def ssh_argv(self) -> list[str]:
        share = (["-o", "ControlMaster=auto", "-o", f"ControlPath={self.control}",
                  "-o", "ControlPersist=30"] if self.control else [])
        # AES-GCM: the CPU's AES instructions carry the dump (unless -c was given)
        cipher = [] if "-c" in self.ssh else ["-c", "aes128-gcm@openssh.com"]
        return ["ssh", "-o", "BatchMode=yes", *share, *cipher, *self.ssh]

    def close(self) -> None:
        if self.control and os.path.exists(self.control):
            subprocess.run([*self.ssh_argv(), "-O", "exit", self.dest], capture_output=True,
                           check=False, timeout=30)

    def run(self, words: Sequence[str], *, check: bool = True, timeout: float = 600
            ) -> subprocess.CompletedProcess[str]:
        env = f"VZ_ROOT={shlex.quote(self.root)} " if self.root else ""
        line = env + self.vzctl + " " + " ".join(shlex.quote(w) for w in words)
        return self.shell(line, check=check, timeout=timeout)

    def shell(self, line: str, *, check: bool = True, timeout: float = 600
              ) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([*self.ssh_argv(), self.dest, line], capture_output=True,
                           text=True, check=False, timeout=timeout)
        if check and r.returncode != 0:
            why = (r.stderr.strip() or r.stdout.strip() or f"exit status {r.returncode}")
            raise MigrateError(f"on {self.dest}: {line}: {why}")
        return r

    @property
    def base(self) -> str:
        return self.root or "/vz"

    def rsync(self, src: str, dst: str, *, delete: bool = False) -> None:
        argv = ["rsync", "-aHAX", "--numeric-ids", "--sparse",
                *(["--delete"] if delete else []),
                "-e", shlex.join(self.ssh_argv()), src, f"{self.dest}:{dst}"]
        r = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=3600)
        if r.returncode != 0:
            raise MigrateError(f"rsync to {self.dest}:{dst} failed: "
                               f"{r.stderr.strip() or r.returncode}",
                               hint="is rsync installed at both ends, and ssh working?")


@dataclass
class Report:
    ctid: int
    dest: str
    online: bool
    steps: dict[str, float] = field(default_factory=dict)
    frozen: float | None = None        # online: chkpnt started .. restore done

    def timed(self, name: str, func: Callable[[], object]) -> None:
        t = time.monotonic()
        func()
        self.steps[name] = round(time.monotonic() - t, 3)


def _both(first: Callable[[], None], second: Callable[[], None] | None) -> None:
    """Run *first* and *second* at once (two copies over the one ssh connection)."""
    if second is None:
        first()
        return
    import threading
    failed: list[BaseException] = []

    def run() -> None:
        try:
            second()
        except BaseException as exc:
            failed.append(exc)

    t = threading.Thread(target=run)
    t.start()
    try:
        first()
    finally:
        t.join()
    if failed:
        raise failed[0]


def _conf_for(rt: Runtime, ctid: int, remote: Remote) -> str:
    """CTID.conf with the destination's VE_ROOT and VE_PRIVATE."""
    out = []
    for line in rt.paths.conf(ctid).read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if key == "VE_ROOT":
            line = f'VE_ROOT="{remote.base}/root/{ctid}"'
        elif key == "VE_PRIVATE":
            line = f'VE_PRIVATE="{remote.base}/private/{ctid}"'
        out.append(line)
    return "\n".join(out) + "\n"


def migrate(rt: Runtime, remote: Remote, ctid: int, *, online: bool,
            keep_dst: bool = False, say: Callable[[str], None] = lambda s: None) -> Report:
    """Move VE *ctid* to *remote* (see the module's text).  Every ssh and rsync of
    one migration shares one ssh connection."""
    with tempfile.TemporaryDirectory(prefix="vzmigrate-") as tmp:
        remote.control = os.path.join(tmp, "ssh")
        try:
            return _migrate(rt, remote, ctid, online=online, keep_dst=keep_dst, say=say)
        finally:
            remote.close()
            remote.control = None


def _migrate(rt: Runtime, remote: Remote, ctid: int, *, online: bool,
             keep_dst: bool, say: Callable[[str], None]) -> Report:
    cfg = rt.config(ctid)
    if layout_of(cfg) is not Layout.PLAIN:
        raise UsageError(f"VE {ctid} has the overlay layout: its files are partly the "
                         "shared cache's, which the destination may not have",
                         hint="migrate plain VEs (vzctl create --layout plain)")
    running = state.running_pid(rt.paths.pidfile(ctid)) is not None
    if online and not running:
        raise UsageError(f"VE {ctid} is not running: --online needs a running VE",
                         hint=f"vzmigrate {remote.dest} {ctid} (offline)")
    rep = Report(ctid, remote.dest, online)
    say(f"Checking the destination {remote.dest} ...")
    st = remote.run(["status", str(ctid)], check=False)
    if st.returncode != 0 or not st.stdout.startswith(f"CTID {ctid}"):
        raise MigrateError(f"cannot run vzctl on {remote.dest}: "
                           f"{st.stderr.strip() or st.stdout.strip()}",
                           hint="check ssh access and --remote-vzctl / --remote-vzroot")
    if " exist " in st.stdout:
        raise VeExistsError(f"VE {ctid} already exists on {remote.dest}; nothing was done",
                            hint="destroy it there first, or migrate another CTID")
    base = remote.base
    priv = f"{base}/private/{ctid}"
    remote.shell("mkdir -p -m 700 " + " ".join(shlex.quote(f"{base}/{d}") for d in
                                              ("private", "etc/vz/conf", "dump")))
    say("Copying the private area (first pass) ...")
    rep.timed("rsync1", lambda: remote.rsync(f"{rt.paths.private(ctid)}/", f"{priv}/"))
    # a dump directory: copied and restored as CRIU wrote it, never packed
    dump = chkpnt.default_dumpfile(rt, ctid).with_name(f"Dump.{ctid}.d")
    rdump = f"{base}/dump/Dump.{ctid}.d"
    conf_sent = False
    stopped_here = False
    t_freeze = time.monotonic()
    try:
        if online:
            say(f"Checkpointing VE {ctid} ...")
            rep.timed("chkpnt", lambda: chkpnt.chkpnt(rt, ctid, dump, tidy=False,
                                                             as_dir=True))
        elif running:
            say(f"Stopping VE {ctid} ...")
            rep.timed("stop", lambda: rt.stop(ctid))
        stopped_here = running
        say("Copying the private area (second pass)" + (" and the dump" if online else "")
            + " ...")
        rep.timed("rsync2", lambda: _both(
            lambda: remote.rsync(f"{rt.paths.private(ctid)}/", f"{priv}/", delete=True),
            (lambda: remote.rsync(f"{dump}/", f"{rdump}/")) if online else None))
        conf = rt.paths.root / "dump" / f".{ctid}.conf.migrate"
        conf.write_text(_conf_for(rt, ctid, remote))
        try:
            rep.timed("copy_conf", lambda: remote.rsync(
                str(conf), f"{base}/etc/vz/conf/{ctid}.conf"))
        finally:
            conf.unlink(missing_ok=True)
        conf_sent = True
        if online:
            say(f"Restoring VE {ctid} on {remote.dest} ...")
            rep.timed("restore", lambda: remote.run(["restore", str(ctid), "--dumpfile",
                                                     rdump]))
            rep.frozen = round(time.monotonic() - t_freeze, 3)
        elif running:
            say(f"Starting VE {ctid} on {remote.dest} ...")
            rep.timed("start", lambda: remote.run(["start", str(ctid)]))
    except BaseException as exc:
        _undo(rt, remote, ctid, online=online, stopped_here=stopped_here, dump=dump,
              conf_sent=conf_sent, keep_dst=keep_dst, priv=priv, rdump=rdump)
        if isinstance(exc, VeError):
            raise MigrateError(f"VE {ctid}: migration to {remote.dest} failed: "
                               f"{exc.message}",
                               hint=f"VE {ctid} is {'running' if stopped_here else 'left'} "
                                    f"here as before" + ("" if keep_dst else
                                    "; what was copied there was removed")) from None
        raise
    say(f"Removing VE {ctid} here ...")
    rt.destroy(ctid, stop=False)
    shutil.rmtree(dump, ignore_errors=True)
    with contextlib.suppress(MigrateError):
        remote.shell(f"rm -rf {shlex.quote(rdump)}")
    return rep


def _undo(rt: Runtime, remote: Remote, ctid: int, *, online: bool, stopped_here: bool,
          dump: Path, conf_sent: bool, keep_dst: bool, priv: str, rdump: str) -> None:
    """After a failed step: the VE runs here again; the destination is cleaned."""
    with contextlib.suppress(Exception):
        st = remote.run(["status", str(ctid)], check=False)
        if " running" in st.stdout:
            remote.run(["stop", str(ctid), "--fast"], check=False)
    if stopped_here and state.running_pid(rt.paths.pidfile(ctid)) is None:
        if online and dump.is_dir():
            chkpnt.restore(rt, ctid, dump)
        else:
            rt.start(ctid)
    if online:
        shutil.rmtree(dump, ignore_errors=True)
    if keep_dst:
        return
    with contextlib.suppress(Exception):
        if conf_sent:
            remote.run(["destroy", str(ctid)], check=False)
        remote.shell("rm -rf " + " ".join(shlex.quote(p) for p in (
            priv, rdump, f"{remote.base}/etc/vz/conf/{ctid}.conf")), check=False)
