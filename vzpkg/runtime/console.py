"""``vzctl enter``: an interactive shell in a running VE through a pty.

The pty comes from the VE's own devpts, so ``tty`` inside names a device the
VE can see.  The host side copies bytes between the user's terminal (put in
raw mode) and the pty master, and passes window-size changes on.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import sys
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
    pid = rt.init_pid(ctid)
    master, slave = join.open_ve_pty(pid)
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    _copy_winsize(stdin, master)
    env = {"PATH": ns.VE_PATH, "HOME": "/root", "TERM": os.environ.get("TERM", "xterm"),
           "container": "vzpkg", "LANG": "C.UTF-8"}
    cg = rt.cgroups
    spec = join.JoinSpec(pid=pid, argv=SHELL_ARGV, stdio=(slave, slave, slave), ctty=True,
                       env=env, attach=lambda p: cg.attach(str(ctid), p))
    old_winch = None
    if os.isatty(stdin):
        old_winch = signal.signal(signal.SIGWINCH,
                                  lambda *_: _copy_winsize(stdin, master))
    try:
        child = join.spawn(spec)
    finally:
        os.close(slave)
    try:
        with _raw(stdin):
            _relay(master, stdin, stdout)
        return join.wait(child)
    finally:
        os.close(master)
        if old_winch is not None:
            signal.signal(signal.SIGWINCH, old_winch)


def _relay(master: int, stdin: int, stdout: int) -> None:
    fds = [master, stdin]
    while True:
        try:
            ready, _, _ = select.select(fds, [], [], 0.2)
        except InterruptedError:
            continue
        if master in ready:
            try:
                data = os.read(master, 65536)
            except OSError as exc:
                if exc.errno == errno.EIO:
                    return
                raise
            if not data:
                return
            os.write(stdout, data)
        if stdin in ready:
            data = os.read(stdin, 65536)
            if not data:
                fds.remove(stdin)
                with contextlib.suppress(OSError):
                    os.write(master, b"\x04")
            else:
                os.write(master, data)
