"""``vzctl enter``, and ``vzctl exec`` from a terminal: a pty of the VE's own.

The pty comes from the VE's own devpts (opened inside the VE by the confined
command itself, see join.py), so ``tty`` inside names a device the VE can see,
and the administrator's terminal is never handed to the VE (no TIOCSTI into
the host shell, no reading what is typed after the command ends).  The host
side copies bytes between the user's terminal (put in raw mode) and the pty
master, and passes window-size changes on, until the command exits.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import termios
import tty
from collections.abc import Iterator
from typing import TYPE_CHECKING

from vzpkg.runtime import join, ns

if TYPE_CHECKING:
    from vzpkg.runtime.ve import Runtime

SHELL_ARGV = ["/bin/sh", "-c",
              "for s in /bin/bash /bin/sh; do [ -x $s ] && exec $s -l; done; exit 127"]


@contextlib.contextmanager
def _raw(fd: int) -> Iterator[None]:
    if not os.isatty(fd):
        yield
        return
    old = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSANOW)  # keep what the user already typed
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSAFLUSH, old)


def _copy_winsize(src: int, dst: int) -> None:
    with contextlib.suppress(OSError):
        ws = fcntl.ioctl(src, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(dst, termios.TIOCSWINSZ, ws)


def enter(rt: Runtime, ctid: int) -> int:
    env = {"PATH": ns.VE_PATH, "HOME": "/root", "TERM": os.environ.get("TERM", "xterm"),
           "container": "vzpkg", "LANG": "C.UTF-8"}
    return run(rt, ctid, SHELL_ARGV, pty=(0, 1, 2), env=env, interactive=True)


def run(rt: Runtime, ctid: int, argv: list[str], *, pty: tuple[int, ...],
        env: dict[str, str] | None = None, interactive: bool = False) -> int:
    """Run *argv* in the VE with our stdio fds *pty* replaced by a VE pty whose
    master we relay to and from this process's terminal; its exit status."""
    pid = rt.init_pid(ctid)
    stdin = 0
    cg = rt.cgroups
    spec = join.JoinSpec(pid=pid, argv=argv, pty=pty, env=env, interactive=interactive,
                         attach=lambda p: cg.attach(str(ctid), p), userns=rt.userns(ctid))
    joined = join.spawn(spec)
    master = joined.master
    assert master is not None
    out = next((fd for fd in (1, 2) if fd in pty), None)
    feed = stdin in pty
    old_winch = None
    if feed and os.isatty(stdin):
        _copy_winsize(stdin, master)
        old_winch = signal.signal(signal.SIGWINCH,
                                  lambda *_: _copy_winsize(stdin, master))
    try:
        with _raw(stdin) if feed else contextlib.nullcontext():
            _relay(master, stdin if feed else None, out, joined.pid)
        return join.wait(joined.pid)
    finally:
        os.close(master)
        if old_winch is not None:
            signal.signal(signal.SIGWINCH, old_winch)


def _relay(master: int, stdin: int | None, stdout: int | None, child: int) -> None:
    """Copy until the command has exited and its output is drained (a process it
    left behind in the VE may keep the pty open: that does not hold us)."""
    pidfd = os.pidfd_open(child)
    fds = [master, pidfd] + ([stdin] if stdin is not None else [])
    try:
        while True:
            try:
                ready, _, _ = select.select(fds, [], [], 1.0)
            except InterruptedError:
                continue
            if master in ready and not _pump(master, stdout):
                return
            if pidfd in ready:
                while select.select([master], [], [], 0.05)[0] and _pump(master, stdout):
                    pass
                return
            if stdin is not None and stdin in ready:
                data = os.read(stdin, 65536)
                if not data:
                    fds.remove(stdin)
                    stdin = None
                    with contextlib.suppress(OSError):
                        os.write(master, b"\x04")
                else:
                    os.write(master, data)
    finally:
        os.close(pidfd)


def _pump(master: int, stdout: int | None) -> bool:
    """One read from the master to *stdout*; False at its end."""
    try:
        data = os.read(master, 65536)
    except OSError as exc:
        if exc.errno == errno.EIO:
            return False
        raise
    if not data:
        return False
    if stdout is not None:
        os.write(stdout, data)
    return True
