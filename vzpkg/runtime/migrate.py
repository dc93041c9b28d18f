"""Moving a VE to another host (vzmigrate): rsync over ssh, then chkpnt/restore or
stop/start.

The destination runs its own vzctl (``remote_vzctl``, default ``vzctl``) with its own
VZ_ROOT (``remote_root``; when not given, the destination's default /vz, or what its
ssh environment sets).  The order keeps the VE whole at one end at every moment:

1. refuse if the destination has that CTID;
2. copy the private area while the VE runs (the bulk of the bytes), then CTID.conf
   (its VE_ROOT and VE_PRIVATE made the destination's);
3. online: ``vzctl chkpnt`` here (the VE freezes and stops), copy again (only what
   changed since) and the dump; offline: stop, copy again;
4. ``vzctl restore`` (online) or ``vzctl start`` there;
5. only once the VE runs there: remove it here.

With ``lazy`` (post-copy, :mod:`lazy`) step 3 dumps all but the memory, and the
source's CRIU serves the memory through the remote ``vzctl restore --page-stream``
(started before the freeze) until the last page is there; only then step 5.

A VE with a disk image (DISKSPACE) moves with its image instead of the files of its
private area; the copy after the stop or the checkpoint, from the unmounted image, is
the one that counts (so it is inside an online migration's freeze).  Post-copy
(``lazy``) migration of such a VE is refused before anything is done.

When a step fails the VE is brought back here (restored from the dump, or started
again), and what was copied to the destination is removed unless ``keep_dst``.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vzpkg.core.errors import UsageError, VeError, VeExistsError
from vzpkg.runtime import chkpnt, diskimage, lazy, net, restore, state
from vzpkg.runtime.derived import layout_of
from vzpkg.runtime.layout import Layout
from vzpkg.runtime.ve import Runtime


class MigrateError(VeError):
    """A migration failed (the VE is back at the source)."""


class PostCopyError(MigrateError):
    """A post-copy migration (--lazy) failed after the VE ran at the destination: its
    memory stopped arriving, so it is stopped at both ends."""

    exit_code = 45


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
        return self.shell(self.vzctl_line(words), check=check, timeout=timeout)

    def vzctl_line(self, words: Sequence[str]) -> str:
        env = f"VZ_ROOT={shlex.quote(self.root)} " if self.root else ""
        return env + self.vzctl + " " + " ".join(shlex.quote(w) for w in words)

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
    lazy: bool = False

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
            keep_dst: bool = False, lazy: bool = False,
            say: Callable[[str], None] = lambda s: None) -> Report:
    """Move VE *ctid* to *remote* (see the module's text).  Every ssh and rsync of
    one migration shares one ssh connection.  *lazy* (with *online*): post-copy, the
    VE's memory follows after it runs there (:mod:`lazy`)."""
    if lazy and not online:
        raise UsageError("--lazy is a kind of live migration: it needs --online")
    with tempfile.TemporaryDirectory(prefix="vzmigrate-") as tmp:
        remote.control = os.path.join(tmp, "ssh")
        try:
            return _migrate(rt, remote, ctid, online=online, keep_dst=keep_dst, lazy=lazy,
                            say=say)
        finally:
            remote.close()
            remote.control = None


@dataclass
class _Where:
    """One migration's paths at both ends."""

    priv: str               # the private area there
    dump: Path              # the dump directory here
    rdump: str              # and there
    rconf: str              # CTID.conf there
    image: bool = False     # the VE's files are in its disk image (PRIVATE.img)
    image_tar: bool = False  # and it goes as a sparse tar stream (_copy_files)

    @property
    def rimage(self) -> str:
        return f"{self.priv}.img"


IMAGE_TAR_MAX = 1 << 30     # an image holding less (allocated): sent whole, holes skipped


def _copy_files(rt: Runtime, remote: Remote, ctid: int, w: _Where, *,
                delete: bool = False) -> None:
    """The VE's files to the destination: its private area, or, for a VE with a disk
    image, the image (sparse) and an empty private area to mount it on.  While the VE
    runs this is a first pass; the pass after the stop (the image unmounted, so all
    its blocks written out) is the one that counts.

    An image is mostly holes (a 4 GiB image of a small VE holds a few MB): rsync
    would read all of it at both ends (4.7 s for 4 GiB), so an image with less than
    ``IMAGE_TAR_MAX`` allocated goes whole, once, after the stop, as a sparse tar
    stream that reads its data extents only; a fuller one goes by rsync, twice."""
    if not w.image:
        remote.rsync(f"{rt.paths.private(ctid)}/", f"{w.priv}/", delete=delete)
        return
    img = diskimage.image_path(rt.paths, ctid)
    if not delete:                  # the first pass
        diskimage.settle(rt.paths, ctid)
        remote.shell(f"mkdir -p -m 700 {shlex.quote(w.priv)}")
        w.image_tar = img.stat().st_blocks * 512 < IMAGE_TAR_MAX
        if w.image_tar:
            return
    if w.image_tar:
        _send_sparse(remote, img, os.path.dirname(w.rimage))
    else:
        remote.rsync(str(img), w.rimage)


def _send_sparse(remote: Remote, path: Path, rdir: str) -> None:
    """*path* into the directory *rdir* there, as GNU tar's sparse stream over the
    migration's ssh connection: only its data extents are read and sent."""
    tar = subprocess.Popen(["tar", "--sparse", "--numeric-owner", "-C", str(path.parent),
                            "-cf", "-", path.name],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert tar.stdout is not None and tar.stderr is not None
    try:
        r = subprocess.run([*remote.ssh_argv(), remote.dest,
                            f"tar --numeric-owner -C {shlex.quote(rdir)} -xf -"],
                           stdin=tar.stdout, capture_output=True, text=True, check=False,
                           timeout=3600)
    finally:
        tar.stdout.close()
        err = tar.stderr.read().decode(errors="replace")
        tar.wait()
    if tar.returncode != 0 or r.returncode != 0:
        raise MigrateError(f"copying {path} to {remote.dest}:{rdir} failed: "
                           f"{err.strip() or r.stderr.strip() or r.returncode}",
                           hint="is GNU tar installed at both ends, and ssh working?")


def _migrate(rt: Runtime, remote: Remote, ctid: int, *, online: bool,
             keep_dst: bool, lazy: bool, say: Callable[[str], None]) -> Report:
    cfg = rt.config(ctid)
    if layout_of(cfg) is not Layout.PLAIN:
        raise UsageError(f"VE {ctid} has the overlay layout: its files are partly the "
                         "shared cache's, which the destination may not have",
                         hint="migrate plain VEs (vzctl create --layout plain)")
    running = state.running_pid(rt.paths.pidfile(ctid)) is not None
    image = diskimage.has_image(rt.paths, ctid)
    if image and lazy:
        raise UsageError(f"VE {ctid} keeps its files in a disk image (DISKSPACE): "
                         "post-copy (--lazy) migration of such a VE is not supported "
                         "(its image stays in use until the last page); nothing was done",
                         hint=f"vzmigrate --online {remote.dest} {ctid} (without --lazy)")
    if online and not running:
        raise UsageError(f"VE {ctid} is not running: --online needs a running VE",
                         hint=f"vzmigrate {remote.dest} {ctid} (offline)")
    rep = Report(ctid, remote.dest, online, lazy=lazy)
    say(f"Checking the destination {remote.dest} ...")
    st = remote.run(["status", str(ctid)], check=False)
    if st.returncode != 0 or not st.stdout.startswith(f"CTID {ctid}"):
        raise MigrateError(f"cannot run vzctl on {remote.dest}: "
                           f"{st.stderr.strip() or st.stdout.strip()}",
                           hint="check ssh access and --remote-vzctl / --remote-vzroot")
    if " exist " in st.stdout:
        raise VeExistsError(f"VE {ctid} already exists on {remote.dest}; nothing was done",
                            hint="destroy it there first, or migrate another CTID")
    if online:
        _check_restore_there(remote, ctid)
    base = remote.base
    # a dump directory: copied and restored as CRIU wrote it, never packed
    w = _Where(f"{base}/private/{ctid}",
               chkpnt.default_dumpfile(rt, ctid).with_name(f"Dump.{ctid}.d"),
               f"{base}/dump/Dump.{ctid}.d", f"{base}/etc/vz/conf/{ctid}.conf",
               image=image)
    remote.shell("mkdir -p -m 700 " + " ".join(shlex.quote(f"{base}/{d}") for d in
                                              ("private", "etc/vz/conf", "dump")))
    say("Copying the private area (first pass) ...")
    conf_sent = False
    try:
        rep.timed("rsync1", lambda: _copy_files(rt, remote, ctid, w))
        # CTID.conf goes before the freeze (it does not change meanwhile)
        conf = rt.paths.root / "dump" / f".{ctid}.conf.migrate"
        conf.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        conf.write_text(_conf_for(rt, ctid, remote))
        try:
            conf_sent = True
            rep.timed("copy_conf", lambda: remote.rsync(str(conf), w.rconf))
        finally:
            conf.unlink(missing_ok=True)
    except BaseException:
        _clean_remote(remote, ctid, w, conf_sent=conf_sent, keep_dst=keep_dst)
        raise
    if lazy:
        _online_lazy(rt, remote, ctid, rep, w, keep_dst=keep_dst, say=say)
    else:
        _copy_and_start(rt, remote, ctid, rep, w, online=online, running=running,
                        keep_dst=keep_dst, say=say)
    return rep


def _check_restore_there(remote: Remote, ctid: int) -> None:
    """Before anything is copied or frozen: can the destination restore (a working
    CRIU there)?  A destination vzctl without ``restore --check`` (an older one) is
    not asked."""
    r = remote.run(["restore", str(ctid), "--check"], check=False)
    if r.returncode == 0 or "unrecognized arguments: --check" in r.stderr:
        return
    why = r.stderr.strip() or r.stdout.strip() or f"exit status {r.returncode}"
    raise MigrateError(f"VE {ctid}: migration to {remote.dest} refused before the freeze: "
                       f"it cannot restore there: {why}",
                       hint=f"VE {ctid} runs here untouched, and nothing was copied; "
                            f"make CRIU work there, or migrate offline")


def _copy_and_start(rt: Runtime, remote: Remote, ctid: int, rep: Report, w: _Where, *,
                    online: bool, running: bool, keep_dst: bool,
                    say: Callable[[str], None]) -> None:
    """The whole dump (or a stop), copied, then restore (or start) there."""
    stopped_here = False
    t_freeze = time.monotonic()
    try:
        if online:
            say(f"Checkpointing VE {ctid} ...")
            # a VE on a disk image is tidied now: its image unmounted, so the copy
            # after the freeze is of a file system written out
            rep.timed("chkpnt", lambda: chkpnt.chkpnt(rt, ctid, w.dump, tidy=w.image,
                                                             as_dir=True))
        elif running:
            say(f"Stopping VE {ctid} ...")
            rep.timed("stop", lambda: rt.stop(ctid))
        stopped_here = running
        say("Copying the private area (second pass)" + (" and the dump" if online else "")
            + " ...")
        rep.timed("rsync2", lambda: _both(
            lambda: _copy_files(rt, remote, ctid, w, delete=True),
            (lambda: remote.rsync(f"{w.dump}/", f"{w.rdump}/")) if online else None))
        if online:
            say(f"Restoring VE {ctid} on {remote.dest} ...")
            rep.timed("restore", lambda: remote.run(["restore", str(ctid), "--dumpfile",
                                                     w.rdump]))
            rep.frozen = round(time.monotonic() - t_freeze, 3)
        elif running:
            say(f"Starting VE {ctid} on {remote.dest} ...")
            rep.timed("start", lambda: remote.run(["start", str(ctid)]))
    except BaseException as exc:
        _undo(rt, remote, ctid, online=online, stopped_here=stopped_here, dump=w.dump,
              keep_dst=keep_dst, w=w)
        if isinstance(exc, VeError):
            raise _failed(ctid, remote, exc, stopped_here, keep_dst) from None
        raise
    _remove_here(rt, remote, ctid, w)


def _failed(ctid: int, remote: Remote, exc: VeError, stopped_here: bool,
            keep_dst: bool) -> MigrateError:
    return MigrateError(f"VE {ctid}: migration to {remote.dest} failed: {exc.message}",
                        hint=f"VE {ctid} is {'running' if stopped_here else 'left'} "
                             f"here as before" + ("" if keep_dst else
                             "; what was copied there was removed"))


def _remove_here(rt: Runtime, remote: Remote, ctid: int, w: _Where) -> None:
    rt.destroy(ctid, stop=False)
    shutil.rmtree(w.dump, ignore_errors=True)
    with contextlib.suppress(MigrateError):
        remote.shell(f"rm -rf {shlex.quote(w.rdump)}")


def _online_lazy(rt: Runtime, remote: Remote, ctid: int, rep: Report, w: _Where, *,
                 keep_dst: bool, say: Callable[[str], None]) -> None:
    """Post-copy: the dump without memory, copied; restore there while the source's
    CRIU serves the memory through the remote vzctl's stdin and stdout."""
    ours, theirs = socket.socketpair()      # ours: CRIU's page server; theirs: ssh's
    line = remote.vzctl_line(["restore", str(ctid), "--dumpfile", w.rdump,
                              "--page-stream"])
    ssh = subprocess.Popen([*remote.ssh_argv(), remote.dest, line], stdin=theirs.fileno(),
                           stdout=theirs.fileno(), stderr=subprocess.PIPE)
    assert ssh.stderr is not None
    said: list[str] = []

    def until(mark: str) -> bool:
        assert ssh.stderr is not None
        for raw in ssh.stderr:
            text = raw.decode(errors="replace").rstrip("\n")
            if text.startswith(mark):
                return True
            said.append(text)
        return False

    ld: chkpnt.LazyDump | None = None
    restored = False
    t_freeze = 0.0
    try:
        # the remote vzctl starts (and is found able to) before anything freezes
        if not until(lazy.READY):
            ssh.wait()
            raise MigrateError(f"on {remote.dest}: vzctl restore --page-stream: "
                               f"{' '.join(said) or f'exit status {ssh.returncode}'}",
                               hint="the destination's vzctl needs --page-stream "
                                    "(this vzpkg); or migrate without --lazy")
        t_freeze = time.monotonic()
        say(f"Checkpointing VE {ctid} (its memory stays here for now) ...")
        t = time.monotonic()
        ld = chkpnt.chkpnt_lazy(rt, ctid, w.dump, ours)
        rep.steps["chkpnt"] = round(time.monotonic() - t, 3)
        say("Copying the private area (second pass) and the dump ...")
        rep.timed("rsync2", lambda: _both(
            lambda: _copy_files(rt, remote, ctid, w, delete=True),
            lambda: remote.rsync(f"{w.dump}/", f"{w.rdump}/")))
        say(f"Restoring VE {ctid} on {remote.dest} ...")
        t = time.monotonic()
        ours.sendall(lazy.GO)
        ours.close()
        restored = until(lazy.RESTORED)
        if not restored:
            ssh.wait()
            raise MigrateError(f"on {remote.dest}: vzctl restore: "
                               f"{' '.join(said) or f'exit status {ssh.returncode}'}")
        rep.steps["restore"] = round(time.monotonic() - t, 3)
        rep.frozen = round(time.monotonic() - t_freeze, 3)
    except BaseException as exc:
        ours.close()
        _undo_lazy(rt, remote, ctid, ld, ssh, theirs, w, keep_dst=keep_dst)
        if isinstance(exc, VeError):
            raise _failed(ctid, remote, exc, True, keep_dst) from None
        raise
    # the point of no return: the VE runs there.  Its address is there now; here its
    # frozen processes only serve their memory.
    net.teardown(rt.paths.host_ifname(ctid))
    say(f"VE {ctid} runs on {remote.dest}; its memory follows ...")
    t = time.monotonic()
    until("\0")                  # (no such line) what else it says, to its end
    code = ssh.wait()
    theirs.close()
    with contextlib.suppress(subprocess.TimeoutExpired):
        ld.wait(60)
    rep.steps["pages"] = round(time.monotonic() - t, 3)
    if code != 0:
        with contextlib.suppress(Exception), rt.locked(ctid):
            rt.cleanup(ctid)
        if ld.proc.poll() is None:
            ld.proc.kill()
        ld.wait()                           # (also gives fs.pipe-max-size back)
        if _runs_there(remote, ctid):
            # the remote vzctl went after the last page: its guard let the VE be
            raise PostCopyError(
                f"VE {ctid}: post-copy migration to {remote.dest} ended abnormally "
                f"({' '.join(said[-3:]) or code}) after every page had arrived there: "
                f"the VE runs on {remote.dest}; here it is stopped",
                hint=f"check it there (vzctl status {ctid}), then destroy the stopped "
                     f"copy here: vzctl destroy {ctid}")
        raise PostCopyError(
            f"VE {ctid}: post-copy migration to {remote.dest} failed after the VE "
            f"started there: its memory stopped arriving ({' '.join(said[-3:]) or code}). "
            f"The VE is stopped on both hosts; its processes are lost",
            hint=f"its files are on both hosts ({remote.dest} has the newer ones): start "
                 f"it on one, e.g. there: vzctl start {ctid}; then destroy the other copy")
    say(f"Removing VE {ctid} here ...")
    _remove_here(rt, remote, ctid, w)


def _runs_there(remote: Remote, ctid: int) -> bool:
    """After the page stream broke: does the VE run at the destination?  Its guard
    stops it at once unless every page had arrived (:mod:`lazyguard`); asked after a
    moment, so that a guard still stopping it has done so."""
    time.sleep(1)
    with contextlib.suppress(Exception):
        st = remote.run(["status", str(ctid)], check=False, timeout=60)
        return st.returncode == 0 and st.stdout.rstrip().endswith(" running")
    return False


def _undo_lazy(rt: Runtime, remote: Remote, ctid: int, ld: chkpnt.LazyDump | None,
               ssh: subprocess.Popen[bytes], theirs: socket.socket, w: _Where, *,
               keep_dst: bool) -> None:
    """Before the VE ran there: it runs here again.  If its processes were dumped,
    they are restored here from the same dump, their memory from the same page
    server (the frozen originals are killed first)."""
    if ssh.poll() is None:
        with contextlib.suppress(Exception):
            ssh.kill()
        ssh.wait()
    with contextlib.suppress(Exception):
        st = remote.run(["status", str(ctid)], check=False)
        if " running" in st.stdout:
            remote.run(["stop", str(ctid), "--fast"], check=False)
    try:
        if ld is not None and ld.proc.poll() is None:
            with rt.locked(ctid):
                rt.cleanup(ctid)
            _drain(theirs)
            restore.restore_lazy(rt, ctid, ld.dump, theirs).wait()
            ld.wait(60)
    finally:
        if ld is not None and ld.proc.poll() is not None:
            ld.wait()                       # gives fs.pipe-max-size back
        theirs.close()
        shutil.rmtree(w.dump, ignore_errors=True)
        _clean_remote(remote, ctid, w, conf_sent=True, keep_dst=keep_dst)


def _drain(sock: socket.socket) -> None:
    """Drop what the page server sent to a reader that is gone."""
    sock.setblocking(False)
    try:
        while sock.recv(1 << 20):
            pass
    except OSError:
        pass
    finally:
        sock.setblocking(True)


def receive_lazy(rt: Runtime, ctid: int, dump: Path) -> None:
    """``vzctl restore --page-stream`` (the destination of ``vzmigrate --lazy``):
    say READY on stderr, wait for GO on stdin, restore the VE from the lazy dump
    directory *dump* and say RESTORED, while stdin and stdout carry the page
    server's stream to CRIU's lazy-pages daemon; return once every page is here."""
    import signal
    import sys
    signal.signal(signal.SIGHUP, signal.SIG_IGN)    # ssh going must not stop the wait
    from vzpkg.core.errors import RestoreError
    from vzpkg.runtime import criu
    criu.find(RestoreError)     # before READY: a failure here freezes nothing there
    # the guard that stops the VE if its pages stop coming, even with this vzctl
    # killed, starts now: before the source freezes
    guard = restore.guard_for(rt, ctid, dump)
    try:
        print(lazy.READY, file=sys.stderr, flush=True)
        got = b""
        while not got.endswith(b"\n") and len(got) < len(lazy.GO):
            chunk = os.read(0, 1)
            if not chunk:
                break
            got += chunk
        if got != lazy.GO:
            raise MigrateError("the source gave up before the restore; nothing was done")
    except BaseException:
        guard.stand_down()
        raise
    mine, daemon_end = socket.socketpair()
    lazy.relay(0, 1, mine)
    try:
        lr = restore.restore_lazy(rt, ctid, dump, daemon_end, guard)
    finally:
        daemon_end.close()
    print(f"{lazy.RESTORED} {lr.pid}", file=sys.stderr, flush=True)
    lr.wait()


def _undo(rt: Runtime, remote: Remote, ctid: int, *, online: bool, stopped_here: bool,
          dump: Path, keep_dst: bool, w: _Where) -> None:
    """After a failed step: the VE runs here again; the destination is cleaned."""
    with contextlib.suppress(Exception):
        st = remote.run(["status", str(ctid)], check=False)
        if " running" in st.stdout:
            remote.run(["stop", str(ctid), "--fast"], check=False)
    if stopped_here and state.running_pid(rt.paths.pidfile(ctid)) is None:
        if online and dump.is_dir():
            restore.restore(rt, ctid, dump)
        else:
            rt.start(ctid)
    if online:
        shutil.rmtree(dump, ignore_errors=True)
    _clean_remote(remote, ctid, w, conf_sent=True, keep_dst=keep_dst)


def _clean_remote(remote: Remote, ctid: int, w: _Where, *, conf_sent: bool,
                  keep_dst: bool) -> None:
    if keep_dst:
        return
    with contextlib.suppress(Exception):
        if conf_sent:
            remote.run(["destroy", str(ctid)], check=False)
        remote.shell("rm -rf " + " ".join(shlex.quote(p) for p in (
            w.priv, w.rimage, w.rdump, w.rconf)), check=False)
