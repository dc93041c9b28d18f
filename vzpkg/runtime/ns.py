"""Starting a VE's init in new namespaces, and joining a running VE.

:func:`start_init` forks twice: the first child unshares the mount, uts, ipc,
net and pid namespaces and forks the VE's pid 1, then exits, so no Python
process of the VE stays around.  Pid 1 waits until the host side has put it
into its cgroup and network (``ready`` callback), then mounts /proc, /sys
(read-only), a minimal /dev, /dev/pts, /dev/shm and /run, pivots into the VE
root, sets the hostname, runs the per-distribution setup, drops capabilities
to :data:`vzpkg.runtime.caps.VE_CAPS` and execs init.  A close-on-exec pipe
tells the host whether exec succeeded, with the error text when it did not.

Joining a running VE (exec, enter) is :mod:`vzpkg.runtime.join`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vzpkg.errors import VeError, VzError
from vzpkg.runtime import caps, libc

VE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# pid 1 of a VE when the distribution's init does not run in a container: a
# shell that reaps orphans while it waits, and on SIGTERM asks every process to
# stop, gives them up to 5 s, then exits (the kernel kills what is left).
# At start it runs /etc/rc.vz start when the VE has one, else the System V start
# scripts of the multi-user runlevel (/etc/rc2.d/S*, /etc/rc.d/rc3.d/S*), so
# services with LSB init scripts (sshd, cron, ...) come up as under OpenVZ.
MINIMAL_INIT = """\
down() {
  trap '' TERM INT
  kill -TERM -1 2>/dev/null
  wait
  n=0
  while [ $n -lt 100 ]; do
    set -- /proc/[0-9]*
    [ $# -le 1 ] && exit 0
    sleep 0.05 & wait $!
    n=$((n+1))
  done
  exit 0
}
trap down TERM INT
services() {
  if [ -x /etc/rc.vz ]; then exec /etc/rc.vz start; fi
  for s in /etc/rc2.d/S* /etc/rc.d/rc3.d/S*; do
    [ -x "$s" ] && "$s" start
  done
}
services </dev/null >/dev/null 2>&1 &
while :; do
  sleep 2147483647 & wait $!
done
"""

INIT_PATH = "/run/vzctl/init"
_DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
            ("urandom", 1, 9), ("tty", 5, 0))
_RO_PROC = ("sys", "sysrq-trigger", "irq", "bus", "fs")
_MASK_PROC = ("kcore", "keys", "timer_list", "kmsg")


@dataclass(frozen=True)
class StartSpec:
    ctid: int
    root: Path                     # the VE root, mounted on the host
    hostname: str | None
    prepare: Callable[[], None] | None = None   # runs inside the VE before init


def _mountpoint(path: str) -> str:
    """*path* as a directory to mount on (already inside the VE's root)."""
    if os.path.islink(path):
        raise VeError(f"the VE's {path} is a symbolic link; it must be a directory",
                      hint=f"remove the link from the VE's private area and create {path}")
    os.makedirs(path, exist_ok=True)
    return path


def _mount_dev() -> None:
    dev = _mountpoint("/dev")
    libc.mount("tmpfs", dev, "tmpfs", libc.MS_NOSUID | libc.MS_NOEXEC, "mode=755,size=64k")
    for name, major, minor in _DEVICES:
        os.mknod(f"{dev}/{name}", 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(f"{dev}/{name}", 0o666)
    # The console leads nowhere: init's output is discarded.
    open(f"{dev}/console", "w").close()
    libc.mount(f"{dev}/null", f"{dev}/console", None, libc.MS_BIND)
    os.mkdir(f"{dev}/pts")
    libc.mount("devpts", f"{dev}/pts", "devpts", libc.MS_NOSUID | libc.MS_NOEXEC,
               "newinstance,ptmxmode=0666,mode=620,gid=5")
    os.symlink("pts/ptmx", f"{dev}/ptmx")
    os.mkdir(f"{dev}/shm")
    libc.mount("shm", f"{dev}/shm", "tmpfs", libc.MS_NOSUID | libc.MS_NODEV,
               "mode=1777,size=65536k")
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", f"{dev}/{name}")
    os.symlink("/proc/self/fd", f"{dev}/fd")


def _mount_ro_bind(path: str) -> None:
    libc.mount(path, path, None, libc.MS_BIND | libc.MS_REC)
    libc.mount(None, path, None, libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY
               | libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC)


def _setup_mounts(root: Path) -> None:
    """Pivot into the VE root first, so that every path below resolves inside the
    VE (a symlink the VE planted can never aim a mount or a write at the host)."""
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
    os.chdir(str(root))
    libc.pivot_root(".", ".")
    libc.umount2(".", libc.MNT_DETACH)
    os.chdir("/")
    nosuid = libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC
    _mount_dev()
    libc.mount("proc", _mountpoint("/proc"), "proc", nosuid)
    for name in _RO_PROC:
        if os.path.exists(f"/proc/{name}"):
            _mount_ro_bind(f"/proc/{name}")
    for name in _MASK_PROC:
        if os.path.exists(f"/proc/{name}"):
            libc.mount("/dev/null", f"/proc/{name}", None, libc.MS_BIND)
    libc.mount("sysfs", _mountpoint("/sys"), "sysfs", nosuid | libc.MS_RDONLY)
    if os.path.isdir("/run") and not os.path.islink("/run"):
        libc.mount("tmpfs", "/run", "tmpfs", libc.MS_NOSUID | libc.MS_NODEV,
                   "mode=755,size=10%")


def ve_env() -> dict[str, str]:
    return {"PATH": VE_PATH, "HOME": "/root", "TERM": os.environ.get("TERM", "linux"),
            "container": "vzpkg", "LANG": "C.UTF-8"}


def close_fds_except(keep: int) -> None:
    os.closerange(3, keep)
    os.closerange(keep + 1, 1 << 20)


def _init_child(spec: StartSpec, r_go: int, w_err: int) -> None:
    """Pid 1 of the VE, until it execs init.  Never returns."""
    try:
        os.setsid()
        if os.read(r_go, 1) != b"1":
            os._exit(1)
        os.close(r_go)
        _setup_mounts(spec.root)
        if spec.hostname:
            libc.sethostname(spec.hostname)
        if spec.prepare is not None:
            spec.prepare()
        os.makedirs("/run/vzctl", exist_ok=True)
        with open(INIT_PATH, "w", encoding="utf-8") as f:
            f.write(MINIMAL_INIT)
        fd = os.open("/dev/null", os.O_RDWR)
        for i in range(3):
            os.dup2(fd, i)
        close_fds_except(w_err)
        caps.drop_to_ve_set()
        os.execve("/bin/sh", ["/bin/sh", INIT_PATH], ve_env())
    except BaseException as exc:  # report anything to the host, then die
        msg = (str(exc) if isinstance(exc, OSError | VzError)
               else traceback.format_exc(limit=3))
        with contextlib.suppress(OSError):
            os.write(w_err, msg.encode(errors="replace")[:4000])
        os._exit(127)
    os._exit(127)


def wait_init_ready(pid: int, timeout: float = 2.0) -> None:
    """Wait until init catches SIGTERM, so that a stop right after start is heard
    (pid 1 of a namespace ignores signals it has no handler for)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith("SigCgt:"):
                        if int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)):
                            return
                        break
        except OSError:
            return
        time.sleep(0.002)


def start_init(spec: StartSpec, ready: Callable[[int], None]) -> int:
    """Start the VE's init; *ready(pid)* joins cgroup and network before it runs.

    Returns init's host pid once init has been exec'd.
    """
    r_pid, w_pid = os.pipe()
    r_go, w_go = os.pipe()
    r_err, w_err = os.pipe2(os.O_CLOEXEC)
    mid = os.fork()
    if mid == 0:
        try:
            os.close(r_pid)
            os.close(w_go)
            os.close(r_err)
            libc.unshare(libc.CLONE_NEWNS | libc.CLONE_NEWUTS | libc.CLONE_NEWIPC
                         | libc.CLONE_NEWNET | libc.CLONE_NEWPID)
            pid1 = os.fork()
            if pid1 == 0:
                os.close(w_pid)
                _init_child(spec, r_go, w_err)
            os.write(w_pid, str(pid1).encode())
            os._exit(0)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.write(w_err, f"cannot create namespaces: {exc}".encode())
            os._exit(1)
    os.close(w_pid)
    os.close(r_go)
    os.close(w_err)
    try:
        raw = os.read(r_pid, 32)
        os.waitpid(mid, 0)
        if not raw:
            why = os.read(r_err, 4000).decode(errors="replace")
            raise VeError(f"VE {spec.ctid}: start failed: {why or 'unknown error'}")
        pid = int(raw)
        try:
            ready(pid)
            os.write(w_go, b"1")
            os.close(w_go)
            w_go = -1
            err = b"".join(iter(lambda: os.read(r_err, 4000), b""))
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            raise
        if err:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            raise VeError(f"VE {spec.ctid}: start failed: {err.decode(errors='replace')}",
                          hint="the VE was stopped again; nothing is left running")
        return pid
    finally:
        for fd in (r_pid, r_err, w_go):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
