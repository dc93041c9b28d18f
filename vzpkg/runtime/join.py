"""Running commands in a running VE: join its namespaces and cgroup, confine, exec.

:func:`spawn` forks once, straight into the VE's pid namespace (this process
enters it for its children only, for the length of the fork); the child puts
itself into the VE's cgroup, then setns into every other namespace of the VE's
init (ipc, uts, net, cgroup, mnt — the mount namespace last, which also puts it
at the VE's root), starts a new session, confines itself
(:func:`vzpkg.runtime.caps.confine`: seccomp filter, VE capabilities, and
no_new_privs unless the spec is an interactive shell) and only then runs
anything: the VE's binary, or a function of ours that reads the VE's files.

The host's terminal never reaches the VE: with ``pty`` the command gets a pty
it opens itself in the VE's own devpts (the master comes back to us over a
socket pair and is checked to be a pty master); otherwise only the descriptors
in ``stdio`` (pipes, files) are passed, in a new session without a controlling
terminal.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import stat
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vzpkg.core.errors import VeError
from vzpkg.runtime import caps, libc
from vzpkg.runtime.ns import close_fds_except, ve_env

_NSES = ("ipc", "uts", "net", "cgroup", "mnt")   # the pid namespace: see spawn
PR_SET_DUMPABLE = 4
TIOCSCTTY = 0x540E
TIOCSPTLCK = 0x40045431
TIOCGPTPEER = 0x5441
PTMX = os.makedev(5, 2)


@dataclass(frozen=True)
class JoinSpec:
    pid: int                        # the VE's init, host pid
    argv: Sequence[str]
    attach: Callable[[int], None]   # put a host pid into the VE's cgroup
    stdio: tuple[int, int, int] | None = None
    pty: tuple[int, ...] = ()       # these of 0, 1, 2 become a pty of the VE's own
    env: dict[str, str] | None = None
    func: Callable[[], int] | None = None   # run this (confined) instead of argv
    hostname: str | None = None     # set the VE's hostname first (before confining)
    interactive: bool = False       # a login shell: keep setuid working (no NNP)
    userns: bool = False            # the VE has a user namespace: join it first


@dataclass(frozen=True)
class Joined:
    pid: int                        # host pid to :func:`wait` for
    master: int | None              # the pty master, when spec.pty


def _status_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _fork_into(pidns: int) -> int:
    """fork() with the child in pid namespace *pidns*: this process enters it for
    its children only, and is back in its own as soon as the fork returns."""
    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc.setns(pidns, libc.CLONE_NEWPID)
        child = os.fork()
        if child != 0:
            libc.setns(own, libc.CLONE_NEWPID)
        return child
    finally:
        os.close(own)


def _same_ns(pid: int, name: str) -> bool:
    """Whether *pid* is in this process's namespace *name* (nothing to join)."""
    try:
        return os.stat(f"/proc/{pid}/ns/{name}").st_ino == os.stat(f"/proc/self/ns/{name}").st_ino
    except OSError:
        return False


def spawn(spec: JoinSpec) -> Joined:
    """Start *spec.argv* in the VE; the host pid to :func:`wait` for."""
    fds: list[int] = []
    try:
        pidns = os.open(f"/proc/{spec.pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        fds.append(pidns)
        for name in ("user", *_NSES) if spec.userns else _NSES:
            if name == "cgroup" and _same_ns(spec.pid, name):
                continue    # a restored VE shares the host's cgroup namespace (CRIU)
            fds.append(os.open(f"/proc/{spec.pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC))
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        raise VeError(f"cannot join the VE's namespaces (init pid {spec.pid}): "
                      f"{exc.strerror}", hint="is the VE running? vzctl status CTID") from None
    ours, theirs = (socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) if spec.pty
                    else (None, None))
    try:
        child = _fork_into(pidns)
    except BaseException:
        for fd in fds:
            os.close(fd)
        for s in (ours, theirs):
            if s is not None:
                s.close()
        raise
    if child == 0:
        code = 126
        try:
            if ours is not None:
                ours.close()
            # not dumpable until the exec: no VE process may ptrace us while we still
            # hold host descriptors (in a user namespace its root would otherwise have
            # CAP_SYS_PTRACE over us once we join it)
            libc.prctl(PR_SET_DUMPABLE, 0)
            spec.attach(os.getpid())
            os.close(pidns)
            for fd in fds[1:]:
                libc.setns(fd)      # the user namespace first: it owns the others
                os.close(fd)
            if spec.userns:         # the VE's root, with its capabilities there only
                os.setgroups([])
                os.setresgid(0, 0, 0)
                os.setresuid(0, 0, 0)
            os.chdir("/")
            code = _run_joined(spec, theirs)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.write(2, f"vzctl: cannot enter the VE: {exc}\n".encode())
        os._exit(code)
    for fd in fds:
        os.close(fd)
    if ours is None or theirs is None:
        return Joined(child, None)
    theirs.close()
    try:
        master = _receive_master(ours, child)
    finally:
        ours.close()
    return Joined(child, master)


def _receive_master(sock: socket.socket, child: int) -> int:
    """The pty master the command opened in the VE; checked to be one."""
    try:
        _, fds, _, _ = socket.recv_fds(sock, 16, 1)
    except OSError:
        fds = []
    if not fds:
        wait(child)
        raise VeError("could not open a terminal in the VE (its /dev/pts/ptmx)",
                      hint="is the VE's /dev intact? vzctl restart CTID")
    master = fds[0]
    st = os.fstat(master)
    if not stat.S_ISCHR(st.st_mode) or st.st_rdev != PTMX:
        os.close(master)
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
        wait(child)
        raise VeError("the VE handed back something that is not a pty master",
                      hint="its /dev/pts/ptmx was replaced; restart the VE")
    os.set_inheritable(master, False)
    return master


def wait(child: int) -> int:
    while True:
        try:
            _, status = os.waitpid(child, 0)
            return _status_code(status)
        except InterruptedError:
            continue


def join(spec: JoinSpec) -> int:
    """Run *spec.argv* in the VE; return its exit status (128+N for signal N)."""
    joined = spawn(spec)
    if joined.master is not None:
        os.close(joined.master)
    return wait(joined.pid)


def _open_pty(sock: socket.socket) -> int:
    """In the VE, confined: a pty of the VE's devpts; the master goes to the host,
    the slave (returned) becomes our controlling terminal."""
    master = os.open("/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_NOFOLLOW)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
    socket.send_fds(sock, [b"m"], [master])
    os.close(master)
    fcntl.ioctl(slave, TIOCSCTTY, 0)
    return slave


def _run_joined(spec: JoinSpec, sock: socket.socket | None) -> int:
    """In the joined namespaces (and the VE's pid namespace): become the command."""
    try:
        if spec.stdio is not None:
            for i, fd in enumerate(spec.stdio):
                os.dup2(fd, i)
        os.setsid()              # never the caller's terminal's session
        if spec.hostname:
            libc.sethostname(spec.hostname)
        if not spec.userns:
            caps.confine(no_new_privs=not spec.interactive)
        if sock is not None:
            slave = _open_pty(sock)
            for i in spec.pty:
                os.dup2(slave, i)
            sock.close()
        if spec.func is not None:
            return spec.func()
        close_fds_except(2)
        env = spec.env if spec.env is not None else ve_env()
        os.execvpe(spec.argv[0], list(spec.argv), env)
    except FileNotFoundError:
        os.write(2, f"vzctl: {spec.argv[0]}: command not found in the VE\n".encode())
        return 127
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.write(2, f"vzctl: cannot run {spec.argv[0]}: {exc}\n".encode())
        return 126
    return 126     # not reached: execvpe returns only by raising
