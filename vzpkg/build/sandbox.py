"""The build's sandbox: where package code runs while a cache is built.

A repository's packages are third-party code, and their maintainer scripts (like
the template's in-VE scripts) run as root.  Every command that touches a build
tree therefore runs through :mod:`vzpkg.build.sandbox_init` in fresh pid, mount, uts
and ipc namespaces that die with the build (``setpriv --pdeathsig KILL`` and
``unshare --kill-child``), in one of two shapes:

* **in the VE** (:meth:`Sandbox.ve`, the template's scripts, apt in the VE):
  the tree becomes the root by ``pivot_root`` and the host's root is detached,
  so no ``..``, chroot or ``/proc/1/root`` trick leads back to the host;
* **a host tool** (:meth:`Sandbox.tool`: mmdebstrap, debootstrap, dnf, which
  run maintainer scripts in a chroot of their own): the tool sees a root of its
  own with the host's /usr and /etc read-only (secrets masked) and nothing
  writable but the build's work directory; a script that climbs out of the
  tool's chroot finds that, not the host's file system.

Both shapes start from one command line (:func:`_launcher`); a :class:`TreeMounts`
and the spec's network and capabilities say how they differ.  A command made
ahead of need waits for a line on its stdin (:class:`Waiting`: the post-install
script's VE, dnf's pre-started interpreter).

Capabilities: everything but :data:`KEEP` is dropped from the bounding set (and
the permitted, effective, inheritable and ambient sets) before the command
runs, so neither it nor anything it starts can mount, load modules, reach raw
devices, ptrace, open files by handle, make device nodes, set the clock, or
change the network; debootstrap keeps what it needs to make its chroot's
sandboxes (see :data:`CHROOT_TOOL`).

Network: in-VE commands and the Debian tools run in a network namespace of the
build's own (:class:`BuildNet`), made when first needed and held by a descriptor
of this process only (it goes with the build, ``kill -9`` included).  Only
loopback is up, and the package proxy's port is forwarded into it: a socket
listening on the same 127.0.0.1 port inside, whose connections are relayed to
the proxy on the host's loopback.  apt and scripts reach the proxy as before,
and nothing else of the host or its network.  dnf downloads from the
repositories itself, so it starts in the host's network and leaves it (a new,
empty namespace) before the RPM transaction runs any scriptlet.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

LAUNCHER = Path(__file__).with_name("sandbox_init.py")
# what dpkg, rpm, apt and maintainer scripts need: files and owners, users, chroot
KEEP = ("chown", "dac_override", "fowner", "fsetid", "kill", "setgid", "setuid",
        "setfcap", "sys_chroot", "audit_write", "net_bind_service")
# debootstrap itself mounts nothing but makes device nodes, and its chroot (the
# wrapper of CHROOT_WRAPPER) makes the VE's sandbox for every command it runs
CHROOT_TOOL = (*KEEP, "mknod", "sys_admin", "setpcap")
PDEATH = ("setpriv", "--pdeathsig", "KILL", "--")
UNSHARE = ("unshare", "--pid", "--mount", "--uts", "--ipc", "--fork", "--kill-child",
           "--propagation", "private", "--")
HOSTNAME = "vzpkg-build"
SANDBOX_DIR = ".sandbox"        # in a build's work directory
WAIT_MARK = "read -r go"        # a VE made ahead waits for a line on stdin

Net = Literal["build", "host", "new"]
T = TypeVar("T")

CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
if TYPE_CHECKING:
    import ctypes


def _libc() -> ctypes.CDLL:
    """The loaded C library, opened when first needed: not at import, because
    `vzpkg show` imports this module and its plan cache keeps no plan made after
    a dlopen (importing ctypes is one)."""
    import ctypes
    return ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Command:
    """A command line and the descriptors it must inherit."""

    argv: list[str]
    pass_fds: tuple[int, ...] = ()


@dataclass(frozen=True)
class TreeMounts:
    """The VE's mounts in a build tree (see vzpkg.build.sandbox_init.TreeMounts)."""

    mounts: tuple[str, ...] = ("proc", "sys", "dev", "run")
    dev_extra: tuple[str, ...] = ("pts", "shm")
    dev_links: tuple[str, ...] = ("fd",)
    binds: tuple[tuple[str, str, bool], ...] = ()   # (host path, path in tree, read-only)

    def spec(self) -> dict[str, Any]:
        return {"mounts": list(self.mounts), "dev_extra": list(self.dev_extra),
                "dev_links": list(self.dev_links), "binds": [list(b) for b in self.binds]}


VE_MOUNTS = TreeMounts()


# -- the build's network namespace --------------------------------------------------------
def _oserror(what: str) -> OSError:
    import ctypes
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def _in_thread(fn: Callable[[], T]) -> T:
    """*fn* run in a thread of its own: it may change the thread's network
    namespace without touching the others'."""
    out: list[T] = []
    err: list[BaseException] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:    # re-raised in the caller
            err.append(exc)
    t = threading.Thread(target=run, name="vzpkg-netns")
    t.start()
    t.join()
    if err:
        raise err[0]
    return out[0]


def _setns(fd: int) -> None:
    if _libc().setns(fd, CLONE_NEWNET) != 0:
        raise _oserror("setns (network)")


def _make_netns() -> int:
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc().unshare(CLONE_NEWNET) != 0:
            raise _oserror("unshare (network)")
        try:
            fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                ifr = fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sH22x", b"lo", 0))
                flags = struct.unpack("16sH22x", ifr)[1]
                fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))
            return fd
        finally:
            _setns(own)
    finally:
        os.close(own)


def _listen_in(netns: int, port: int) -> socket.socket:
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(netns)
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen(64)
            return s
        finally:
            _setns(own)
    finally:
        os.close(own)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    buf = bytearray(1 << 18)
    view = memoryview(buf)
    try:
        while n := src.recv_into(buf):
            dst.sendall(view[:n])
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def relay(conn: socket.socket, port: int) -> None:
    """Copy both ways between *conn* and 127.0.0.1:*port* until both ends close."""
    with conn:
        try:
            up = socket.create_connection(("127.0.0.1", port), timeout=30)
        except OSError:
            return
        with up:
            up.settimeout(None)
            back = threading.Thread(target=_pump, args=(up, conn), daemon=True,
                                    name="vzpkg-relay")
            back.start()
            _pump(conn, up)
            back.join()


def _accept(listener: socket.socket, port: int) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return                      # closed
        threading.Thread(target=relay, args=(conn, port), daemon=True,
                         name="vzpkg-relay").start()


class BuildNet:
    """A network namespace of the build's own: loopback up, and ports of the
    host's loopback forwarded into it (:meth:`forward`).  The namespace lives
    as long as this object's descriptor (and the processes in it)."""

    def __init__(self) -> None:
        self.fd = _in_thread(_make_netns)
        self._close_fd = weakref.finalize(self, os.close, self.fd)
        self._listeners: dict[int, socket.socket] = {}
        self._lock = threading.Lock()

    def forward(self, port: int) -> None:
        """127.0.0.1:*port* inside reaches 127.0.0.1:*port* of the host."""
        with self._lock:
            if port in self._listeners:
                return
            fd = self.fd
            listener = _in_thread(lambda: _listen_in(fd, port))
            self._listeners[port] = listener
        threading.Thread(target=_accept, args=(listener, port), daemon=True,
                         name=f"vzpkg-forward-{port}").start()

    def close(self) -> None:
        with self._lock:
            for listener in self._listeners.values():
                with contextlib.suppress(OSError):
                    listener.shutdown(socket.SHUT_RDWR)
                listener.close()
            self._listeners.clear()
        self._close_fd()


# -- command lines ----------------------------------------------------------------------
def python() -> str:
    """The interpreter that runs the launcher (this one, without its venv)."""
    return os.path.realpath(sys.executable)


def _launcher(spec: dict[str, Any], launcher: Path = LAUNCHER) -> list[str]:
    """The start of every sandbox's command line, ROOT and COMMAND to follow:
    ``unshare`` into fresh namespaces, then *launcher* (sandbox_init.py) with
    *spec*, which says what differs between sandboxes (kind, network, mounts,
    capabilities)."""
    return [*UNSHARE, python(), "-I", "-S", str(launcher),
            json.dumps(spec, separators=(",", ":"))]


def _launch(spec: dict[str, Any], root: str, argv: Sequence[str]) -> Command:
    """*argv* in a sandbox that dies with this process; it inherits the
    descriptor of the network namespace the spec's ``net`` names, if any."""
    net = spec["net"]
    return Command([*PDEATH, *_launcher(spec), root, *argv],
                   (net,) if isinstance(net, int) else ())


def ve_spec(*, net: int | str, mounts: TreeMounts = VE_MOUNTS,
            wait: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"kind": "ve", "net": net, "caps": list(KEEP),
                            "hostname": HOSTNAME, "tree": mounts.spec()}
    if wait:
        spec["wait"] = WAIT_MARK
    return spec


def sandbox_dir(work: Path) -> Path:
    """``<work>/.sandbox``: the launcher's copy that tools inside their root use
    (dnf's restrict, debootstrap's chroot), and the tool root's mount point."""
    d = work / SANDBOX_DIR
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    copy = d / LAUNCHER.name
    if not copy.exists():
        shutil.copyfile(LAUNCHER, copy)
    return d


def tool_command(argv: Sequence[str], *, work: Path, net: Net | int = "host",
                 caps: Sequence[str] | None = KEEP, tree: Path | None = None,
                 tree_mounts: TreeMounts | None = None, rw: Sequence[Path] = (),
                 ro: Sequence[Path] = (), scratch: Sequence[Path] = (),
                 serve: bool = False, nodev: bool = True, chroot: bool = False,
                 cwd: str = "/") -> Command:
    """*argv* as a host tool in its own root (see the module docstring); *net*
    "host", "new" or the descriptor of a namespace to enter.  With *tree*, the
    tree gets *tree_mounts* before the tool starts or, with *serve*, when the
    tool asks (``$VZPKG_SANDBOX_FD``, see :func:`request`).  Writes below the
    *scratch* paths (once the tree is mounted) go to a throwaway layer."""
    sdir = sandbox_dir(work)
    spec: dict[str, Any] = {
        "kind": "tool", "net": net, "caps": None if caps is None else list(caps),
        "stage": str(sdir / "root"), "nodev": nodev, "cwd": cwd, "serve": serve,
        "rw": [os.path.abspath(p) for p in (work, *rw)],
        "ro": [os.path.abspath(p) for p in ro],
        "tree": (tree_mounts or VE_MOUNTS).spec(),
        "scratch": [os.path.abspath(p) for p in scratch],
    }
    if chroot:
        wrapper = sdir / "chroot"
        wrapper.write_text(_chroot_wrapper(sdir / LAUNCHER.name))
        wrapper.chmod(0o755)
        spec["files"] = [[str(wrapper), "/usr/sbin/chroot"]]
        prefix = os.path.realpath(sys.base_prefix)
        if not prefix.startswith("/usr/"):
            spec["ro"].append(prefix)
    return _launch(spec, os.path.abspath(tree) if tree else "", argv)


def _chroot_wrapper(launcher: Path) -> str:
    # the tree's own /run (debootstrap's maintainer scripts make /run/lock there)
    spec = ve_spec(net="host", mounts=TreeMounts(mounts=("proc", "sys", "dev")))
    return (
        "#!/bin/sh\n"
        "# vzpkg: `chroot DIR [COMMAND...]` runs COMMAND in the build VE's sandbox\n"
        'case "${1:-}" in ""|-*) echo "vzpkg: this chroot takes only DIR [COMMAND...]" >&2;'
        " exit 125;; esac\n"
        'dir=$1; shift\n'
        '[ "$#" -gt 0 ] || set -- /bin/sh -i\n'
        f'exec {shlex.join(_launcher(spec, launcher))} "$dir" "$@"\n')


def stop(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """Kill a sandboxed command started from one of our command lines, and wait
    until its sandbox's first process is gone too (``unshare --kill-child``
    kills it, and with it the whole pid namespace, just after ``unshare``
    itself ends)."""
    try:
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children", encoding="ascii") as f:
            children = [int(p) for p in f.read().split()]
    except OSError:
        children = []
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + timeout
    for pid in children:
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if not f.read():
                        break               # a zombie: nothing of it runs
            except OSError:
                break
            time.sleep(0.005)


class Waiting:
    """A sandboxed command started ahead of need, waiting for one line on its
    stdin before it does its work (a VE made ahead: its spec's ``wait``; dnf's
    pre-started interpreter: its own read).  :meth:`send` gives it that line,
    :meth:`stop` ends it unused, its sandbox with it; EOF alone means: not
    needed."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    def send(self, line: bytes) -> None:
        """Write *line* and close stdin (one that already ended is told nothing:
        what it said is in its output)."""
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write(line + b"\n")
            self.proc.stdin.close()

    def stop(self) -> None:
        if self.proc.returncode is not None:
            return                  # it ran, and was waited for
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        stop(self.proc)             # setpriv/unshare: the namespaces go with it
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def request(what: Literal["mount", "umount"]) -> str:
    """Shell text a tool's hook runs to have the sandbox's first process make
    (or remove) the tree's mounts; fails unless it answers ok."""
    return (f'printf "{what}\\n" >&"$VZPKG_SANDBOX_FD" && '
            'IFS= read -r vzpkg_answer <&"$VZPKG_SANDBOX_FD" && '
            '{ [ "$vzpkg_answer" = ok ] || '
            f'{{ echo "vzpkg sandbox: {what}: $vzpkg_answer" >&2; false; }}; }}')


@dataclass
class Sandbox:
    """One build's sandbox: its network namespace (made on first use) and the
    command lines of its VE and tools."""

    _net: BuildNet | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def net(self) -> BuildNet:
        with self._lock:
            if self._net is None:
                self._net = BuildNet()
            return self._net

    def forward(self, port: int) -> None:
        """Make the host's 127.0.0.1:*port* (the package proxy) reachable inside."""
        self.net.forward(port)

    def close(self) -> None:
        with self._lock:
            net, self._net = self._net, None
        if net is not None:
            net.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ve(self, root: Path, argv: Sequence[str], *, wait: bool = False) -> Command:
        """*argv* run inside the VE whose tree is *root*; with *wait*, only once
        a line arrives on its stdin (EOF: not at all)."""
        return _launch(ve_spec(net=self.net.fd, wait=wait), os.path.abspath(root), argv)

    def tool(self, argv: Sequence[str], *, work: Path, net: Net = "build",
             **kw: Any) -> Command:
        """:func:`tool_command` with this build's network namespace for "build"."""
        return tool_command(argv, work=work, net=self.net.fd if net == "build" else net, **kw)
