"""The guard of a post-copy restore: no VE runs on with pages that never came.

A VE restored from a lazy dump (:mod:`lazy`) runs while CRIU's ``lazy-pages``
daemon still fills its memory.  Each restored process has a userfaultfd that only
the daemon holds; if the daemon ends early (the stream broke, it was killed, or
the vzctl that relays the stream was killed), the kernel closes those descriptors
and every page not yet received reads as zeros: the VE would run on with memory it
never had.  vzctl waiting for the daemon's exit status is not enough, since vzctl
itself may be what died.

So the daemon is not vzctl's child but the guard's: a small process in a session
of its own (a signal to vzctl's session or a SIGKILL of vzctl leaves it), started
before the source freezes, told over a socket pair what to run and handed the
page stream's descriptors.  It holds a pidfd of the daemon, and once the VE runs,
copies of the daemon's userfaultfds (``pidfd_getfd``): a process that touches a
missing page after the daemon died then waits in the fault instead of getting a
zero page.  When the daemon ends:

- exit status 0 (CRIU's lazy-pages ends 0 only once no process is left with a page
  to copy; an error, such as the page stream's end, is a non-zero status): the
  copies are closed, and ``complete`` is logged;
- anything else, unless vzctl told it to stand down (a restore vzctl undoes
  itself): the VE's cgroup is killed at once (``cgroup.kill``, or freeze and kill
  on v1), its copies closed only then, and the VE is recorded as stopped (network,
  mount, cgroup and pid file undone, as ``vzctl stop``).

Its exit status says which (:data:`COMPLETE`, :data:`KILLED`, :data:`STOOD_DOWN`).
It never runs or reads anything of the VE's: it reads ``/proc`` of the daemon, a
host root process.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

COMPLETE, KILLED, STOOD_DOWN = 0, 3, 4
_SYS_PIDFD_GETFD = 438          # the same number on every architecture
_RESCAN = 0.25                  # seconds: userfaultfds made since (forks) are copied too


class Guard:
    """vzctl's end of a guard (see the module's text)."""

    def __init__(self, root: Path, ctid: int, log: Path) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        log.unlink(missing_ok=True)
        err = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-P", "-m", "vzpkg.runtime.lazyguard", str(root),
                 str(ctid), str(theirs.fileno())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                pass_fds=(theirs.fileno(),), start_new_session=True)
        finally:
            os.close(err)
            theirs.close()
        self.ctl = ours
        self.log = log

    def start(self, criu_argv: Sequence[str], args: Sequence[str],
              pages: socket.socket, status_w: int) -> None:
        """Run ``criu_argv args`` under the guard; ``{pages}`` and ``{status}`` in
        *args* become the descriptors *pages* and *status_w* as the guard has them."""
        msg = json.dumps({"do": "start", "argv": [*criu_argv, *args]}).encode() + b"\n"
        socket.send_fds(self.ctl, [msg], [pages.fileno(), status_w])

    def arm(self) -> None:
        """The VE runs: the guard copies the daemon's userfaultfds now."""
        self._say("arm")

    def stand_down(self) -> None:
        """The restore failed and vzctl undoes it: end the daemon, touch nothing."""
        self._say("stand-down")
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.ctl.close()

    def wait(self, timeout: float | None = None) -> int:
        code = self.proc.wait(timeout)
        self.ctl.close()
        return code

    def poll(self) -> int | None:
        return self.proc.poll()

    def _say(self, what: str) -> None:
        with contextlib.suppress(OSError):
            self.ctl.sendall(json.dumps({"do": what}).encode() + b"\n")


def _log(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} lazy-pages guard: {text}", file=sys.stderr,
          flush=True)


def _pidfd_getfd(pidfd: int, fd: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    got = int(libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0))
    if got < 0:
        raise OSError(ctypes.get_errno(), "pidfd_getfd")
    return got


def _copy_uffds(pid: int, pidfd: int, held: dict[int, int]) -> None:
    """Copy each userfaultfd the daemon *pid* holds that is not in *held* yet
    (its descriptor number there -> the copy here)."""
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return
    for name in names:
        n = int(name)
        if n in held:
            continue
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{name}") == "anon_inode:[userfaultfd]":
                held[n] = _pidfd_getfd(pidfd, n)


def _read_line(sock: socket.socket, buf: bytearray) -> tuple[dict[str, object] | None,
                                                             list[int], bool]:
    """One message from vzctl (with the descriptors that came with it); the bool is
    False once vzctl's end is closed."""
    while b"\n" not in buf:
        data, fds, _, _ = socket.recv_fds(sock, 4096, 4)
        if not data:
            for fd in fds:
                os.close(fd)
            return None, [], False
        buf += data
        if fds:
            line, _, rest = bytes(buf).partition(b"\n")
            buf[:] = rest
            return json.loads(line), fds, True
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return json.loads(line), [], True


def _stop_ve(root: Path, ctid: int) -> None:
    """Kill every process of VE *ctid* at once, then record it as stopped."""
    from vzpkg.runtime.paths import VzPaths
    from vzpkg.runtime.ve import Runtime
    rt = Runtime(VzPaths(root), wait_lock=True)
    try:
        rt.cgroups.kill_all(str(ctid))
        _log(f"VE {ctid}: its processes were killed")
    except Exception as exc:      # said; the cleanup below kills again
        _log(f"VE {ctid}: killing its cgroup: {exc}")
    with rt.locked(ctid):
        rt.cleanup(ctid)
    _log(f"VE {ctid}: recorded as stopped (network, mount, cgroup and pid file undone)")


def main(argv: Sequence[str]) -> int:
    root, ctid, ctl_fd = Path(argv[0]), int(argv[1]), int(argv[2])
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    with contextlib.suppress(OSError):          # the OOM killer takes others first
        Path("/proc/self/oom_score_adj").write_text("-1000")
    # imported now, while the source still runs (vzctl starts the guard before
    # the freeze): neither the daemon's start nor a kill later waits for imports
    import vzpkg.runtime.ve  # noqa: F401
    ctl = socket.socket(fileno=ctl_fd)
    buf = bytearray()
    msg, fds, alive = _read_line(ctl, buf)
    if msg is None or msg.get("do") != "start" or len(fds) != 2:
        for fd in fds:
            os.close(fd)
        return STOOD_DOWN                       # vzctl went before anything ran
    pages, status = fds
    words = msg["argv"]
    assert isinstance(words, list)
    mine = {"{pages}": str(pages), "{status}": str(status)}
    args = [mine.get(str(a), str(a)) for a in words]
    daemon = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, pass_fds=(pages, status))
    os.close(pages)
    os.close(status)
    pidfd = os.pidfd_open(daemon.pid)
    held: dict[int, int] = {}
    armed = False
    try:
        while True:
            watch = [pidfd, ctl.fileno()] if alive else [pidfd]
            ready, _, _ = select.select(watch, [], [], _RESCAN if armed else None)
            if armed:
                _copy_uffds(daemon.pid, pidfd, held)
            if pidfd in ready:
                break
            if alive and ctl.fileno() in ready:
                msg, extra, alive = _read_line(ctl, buf)
                for fd in extra:
                    os.close(fd)
                if not alive:            # killed, maybe inside the restore: hold
                    armed = True            # what userfaultfds there are from now
                    _copy_uffds(daemon.pid, pidfd, held)
                    _log(f"vzctl is gone; watching the daemon still, holding "
                         f"{len(held)} userfaultfd(s)")
                elif msg is not None and msg.get("do") == "arm":
                    armed = True
                    _copy_uffds(daemon.pid, pidfd, held)
                    _log(f"VE {ctid} runs; holding {len(held)} userfaultfd(s)")
                elif msg is not None and msg.get("do") == "stand-down":
                    daemon.kill()
                    daemon.wait()
                    _log("stood down (vzctl undoes the restore)")
                    return STOOD_DOWN
        code = daemon.wait()
        if code == 0:
            _log("complete: every page arrived")
            return COMPLETE
        _log(f"the daemon ended before the last page (status {code}): stopping VE {ctid}")
        _stop_ve(root, ctid)
        return KILLED
    finally:
        for fd in held.values():
            os.close(fd)
        os.close(pidfd)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
