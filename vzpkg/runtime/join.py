"""Running commands in a VE: join a running one, or confine one to a stopped VE's root.

:func:`spawn`/:func:`join` setns into the namespaces of the VE's init (ipc, uts,
net, pid, mnt — the mount namespace last, which also puts the process at the VE's
root), enter its cgroup, fork once more so the command is inside the VE's pid
namespace, drop capabilities to the VE set and exec.  :func:`open_ve_pty` makes
a pty in the VE's own devpts for ``vzctl enter``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vzpkg.errors import VeError
from vzpkg.runtime import caps, libc
from vzpkg.runtime.ns import close_fds_except, ve_env

_NSES = ("ipc", "uts", "net", "pid", "mnt")
TIOCSCTTY = 0x540E
TIOCGPTN = 0x80045430
TIOCSPTLCK = 0x40045431


@dataclass(frozen=True)
class JoinSpec:
    pid: int                        # the VE's init, host pid
    argv: Sequence[str]
    attach: Callable[[int], None]   # put a host pid into the VE's cgroup
    stdio: tuple[int, int, int] | None = None
    ctty: bool = False              # make stdio[0] the controlling terminal
    env: dict[str, str] | None = None
    func: Callable[[], int] | None = None   # run this (full caps) instead of argv


def _status_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def spawn(spec: JoinSpec) -> int:
    """Start *spec.argv* in the VE; return the host pid to :func:`wait` for."""
    fds: list[int] = []
    try:
        for name in _NSES:
            fds.append(os.open(f"/proc/{spec.pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC))
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        raise VeError(f"cannot join the VE's namespaces (init pid {spec.pid}): "
                      f"{exc.strerror}", hint="is the VE running? vzctl status CTID") from None
    child = os.fork()
    if child == 0:
        code = 126
        try:
            spec.attach(os.getpid())
            for fd in fds:
                libc.setns(fd)
                os.close(fd)
            os.chdir("/")
            code = _join_exec(spec)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.write(2, f"vzctl: cannot enter the VE: {exc}\n".encode())
        os._exit(code)
    for fd in fds:
        os.close(fd)
    return child


def wait(child: int) -> int:
    while True:
        try:
            _, status = os.waitpid(child, 0)
            return _status_code(status)
        except InterruptedError:
            continue


def join(spec: JoinSpec) -> int:
    """Run *spec.argv* in the VE; return its exit status (128+N for signal N)."""
    return wait(spawn(spec))


def _join_exec(spec: JoinSpec) -> int:
    """In the joined namespaces: fork the command (now in the VE's pid ns)."""
    gc = os.fork()
    if gc == 0:
        try:
            if spec.stdio is not None:
                for i, fd in enumerate(spec.stdio):
                    os.dup2(fd, i)
            if spec.ctty:
                os.setsid()
                fcntl.ioctl(0, TIOCSCTTY, 0)
            if spec.func is not None:
                os._exit(spec.func())
            close_fds_except(2)
            caps.drop_to_ve_set()
            env = spec.env if spec.env is not None else ve_env()
            os.execvpe(spec.argv[0], list(spec.argv), env)
        except FileNotFoundError:
            os.write(2, f"vzctl: {spec.argv[0]}: command not found in the VE\n".encode())
            os._exit(127)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.write(2, f"vzctl: cannot run {spec.argv[0]}: {exc}\n".encode())
            os._exit(126)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            _, status = os.waitpid(gc, 0)
            return _status_code(status)
        except InterruptedError:
            continue


def open_ve_pty(pid: int) -> tuple[int, int]:
    """A pty pair from the VE's own devpts (so ``tty`` inside names it)."""
    base = f"/proc/{pid}/root/dev/pts"
    try:
        master = os.open(f"{base}/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.EACCES):
            raise
        return os.openpty()
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    n = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, b"\0\0\0\0"))[0]
    slave = os.open(f"{base}/{n}", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    return master, slave


def run_in_root(root: Path, argv: Sequence[str], stdin: bytes) -> tuple[int, bytes]:
    """Run *argv* confined to a stopped VE's mounted *root* (own mount namespace,
    pivot_root, VE capabilities); feed *stdin*; return (status, stderr)."""
    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.dup2(r_in, 0)
            os.dup2(w_out, 1)
            os.dup2(w_out, 2)
            libc.unshare(libc.CLONE_NEWNS)
            libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
            libc.mount(str(root), str(root), None, libc.MS_BIND)
            os.chdir(str(root))
            libc.pivot_root(".", ".")
            libc.umount2(".", libc.MNT_DETACH)
            os.chdir("/")
            close_fds_except(2)
            caps.drop_to_ve_set()
            os.execve(argv[0], list(argv), ve_env())
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.write(2, f"{argv[0]}: {exc}\n".encode())
        os._exit(127)
    os.close(r_in)
    os.close(w_out)
    with contextlib.suppress(BrokenPipeError):
        os.write(w_in, stdin)
    os.close(w_in)
    out = b"".join(iter(lambda: os.read(r_out, 65536), b""))
    os.close(r_out)
    _, status = os.waitpid(child, 0)
    return _status_code(status), out
