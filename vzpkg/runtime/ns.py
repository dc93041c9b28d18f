"""Starting a VE's init in new namespaces, and running a command in a stopped VE.

:func:`start_init` forks twice: the first child unshares the mount, uts, ipc,
net and pid namespaces and forks the VE's pid 1, then exits, so no Python
process of the VE stays around.  Pid 1 waits until the host side has put it
into its cgroup and network (``ready`` callback), then enters a cgroup
namespace rooted at that cgroup, pivots into the VE root and mounts /proc,
/sys (read-only), a minimal /dev, /dev/pts, /dev/shm and /run there, sets the
hostname and confines itself (:func:`vzpkg.runtime.caps.confine`: seccomp
filter, capabilities cut to the VE set).  Only then does it touch the VE's
files (the per-distribution setup, which refuses FIFOs and devices) and exec
init: nothing from the VE ever runs, or is read, with host privileges.  A
close-on-exec pipe tells the host whether exec succeeded, with the error text
when it did not; a setup that hangs is killed after :data:`SETUP_TIMEOUT`.

:func:`run_command` does the same for one command in a stopped VE (``vzctl set
--userpasswd``): it is pid 1 of its own namespaces, so nothing it starts can
outlive it.

Joining a running VE (exec, enter) is :mod:`vzpkg.runtime.join`.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import stat
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vzpkg.core.errors import VeError, VzError
from vzpkg.runtime import caps, libc, lxcfs
from vzpkg.runtime.idmap import IdRange

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
  # ssh host keys for a VE's first start (caches ship none): made here, by the
  # VE's own tools, confined like everything else the VE runs
  if [ -x /usr/bin/ssh-keygen ] && [ -d /etc/ssh ]; then
    set -- /etc/ssh/ssh_host_*_key
    [ -e "$1" ] || /usr/bin/ssh-keygen -A
  fi
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
            ("urandom", 1, 9), ("tty", 5, 0),
            # a console that leads nowhere (when no pty is made for it): a null
            # device of its own, never /dev/null's inode, which the VE's init
            # chmods 0620 (systemd does), so that /dev/null stays writable to all
            ("console", 1, 3))
_RO_PROC = ("sys", "sysrq-trigger", "irq", "bus", "fs")
# /proc/kmsg is not masked: the kernel itself refuses it to a VE (opening it needs
# CAP_SYSLOG, or CAP_SYS_ADMIN, over the initial user namespace: a user-namespaced
# VE's root has neither there, and the old mode drops both from the bounding set).
# Masked with /dev/null, that refusal became an endless EOF on which rsyslog's imklog
# spins (4 % of a CPU per VE, measured)
_MASK_PROC = ("kcore", "keys", "timer_list")


SETUP_TIMEOUT = 30.0   # seconds pid 1 may take from its namespaces to exec


@dataclass(frozen=True)
class StartSpec:
    ctid: int
    root: Path                     # the VE root, mounted on the host
    hostname: str | None
    prepare: Callable[[], object] | None = None   # runs inside the VE before init
    run_size: str = "size=64m"     # the VE's /run tmpfs
    argv: Sequence[str] | None = None   # run this instead of init (run_command)
    stdio: tuple[int, int, int] | None = None   # its stdin, stdout, stderr
    # puts the calling process into the VE's cgroup; pid 1 runs it first thing,
    # before anything else, while the host sets up the VE's network beside it (a
    # cgroup migration waits out an RCU grace period: milliseconds of sleep)
    enter_cgroup: Callable[[], None] | None = None
    # a user namespace mapping the VE's root to these host ids (None: the old mode,
    # host root with the VE's capability set); *root* is then an idmapped mount
    ids: IdRange | None = None
    # a host directory with the empty mount points "root" and "dev", on the way to
    # which the VE's root may look up names (VZ_ROOT/root is closed to it)
    stage: Path | None = None
    init: str | None = None        # the VE's own init ("/sbin/init"); None: MINIMAL_INIT
    # a unix socket fd: pid 1 makes the VE's console a pty of the VE's own devpts and
    # sends its master back through it (vzctl console); None: the console is a null
    # device of its own
    console: int | None = None
    # where lxcfs is mounted on the host (runtime.lxcfs): its files cover the VE's
    # /proc/meminfo, cpuinfo, ... so the VE sees its own figures; None: the host's
    lxcfs: Path | None = None


def _mountpoint(path: str) -> str:
    """*path* as a directory to mount on (already inside the VE's root)."""
    if os.path.islink(path):
        raise VeError(f"the VE's {path} is a symbolic link; it must be a directory",
                      hint=f"remove the link from the VE's private area and create {path}")
    os.makedirs(path, exist_ok=True)
    return path


def _mount_dev() -> None:
    """The VE's /dev: a nodev tmpfs in which each standard node is a bind mount of
    a node we made on a tmpfs of our own, now covered (never the host's nodes).
    A device node that appears in /dev by any other way cannot be opened."""
    dev = _mountpoint("/dev")
    libc.mount("tmpfs", dev, "tmpfs", libc.MS_NOSUID | libc.MS_NOEXEC, "mode=755,size=16k")
    nodes: list[tuple[str, int]] = []
    try:
        for name, major, minor in _DEVICES:
            os.mknod(f"{dev}/{name}", 0o666 | stat.S_IFCHR, os.makedev(major, minor))
            os.chmod(f"{dev}/{name}", 0o666)
            nodes.append((name, os.open(f"{dev}/{name}", os.O_PATH | os.O_NOFOLLOW)))
        libc.mount("tmpfs", dev, "tmpfs", libc.MS_NOSUID | libc.MS_NOEXEC | libc.MS_NODEV,
                   "mode=755,size=64k")
        for name, fd in nodes:
            open(f"{dev}/{name}", "w").close()
            libc.mount(f"/proc/self/fd/{fd}", f"{dev}/{name}", None, libc.MS_BIND)
    finally:
        for _, fd in nodes:
            os.close(fd)
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


def _setup_mounts(root: Path, run_size: str, lx: list[tuple[int, str]] | None = None) -> None:
    """Pivot into the VE root first, so that every path below resolves inside the
    VE (a symlink the VE planted can never aim a mount or a write at the host)."""
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
    os.chdir(str(root))
    libc.pivot_root(".", ".")
    libc.umount2(".", libc.MNT_DETACH)
    os.chdir("/")
    nosuid = libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC
    libc.mount("proc", _mountpoint("/proc"), "proc", nosuid)   # first: _mount_dev uses it
    _mount_dev()
    for name in _RO_PROC:
        if os.path.exists(f"/proc/{name}"):
            _mount_ro_bind(f"/proc/{name}")
    for name in _MASK_PROC:
        if os.path.exists(f"/proc/{name}"):
            libc.mount("/dev/null", f"/proc/{name}", None, libc.MS_BIND)
    libc.mount("sysfs", _mountpoint("/sys"), "sysfs", nosuid | libc.MS_RDONLY)
    lxcfs.bind(lx or [])
    libc.mount("tmpfs", _mountpoint("/run"), "tmpfs", libc.MS_NOSUID | libc.MS_NODEV,
               f"mode=755,{run_size}")


def _stage_dev(stage: Path, ids: IdRange) -> None:
    """The VE's /dev for a user-namespaced VE, made by host root in a mount namespace
    of its own before the user namespace exists: a tmpfs with the standard nodes
    (a VE's root cannot make device nodes), owned by the VE's root.  These nodes are
    ours, never the host's: the VE's init may change their modes freely."""
    libc.mount("tmpfs", str(stage), "tmpfs", libc.MS_NOSUID | libc.MS_NOEXEC,
               "mode=755,size=64k")
    for name, major, minor in _DEVICES:
        node = stage / name
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(node, 0o666)
        os.chown(node, ids.base, ids.base)
    for name in ("pts", "shm"):
        (stage / name).mkdir()
        os.chown(stage / name, ids.base, ids.base)
    os.symlink("pts/ptmx", stage / "ptmx")
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", stage / name)
    os.symlink("/proc/self/fd", stage / "fd")
    os.chown(stage, ids.base, ids.base)


def _setup_mounts_userns(root: Path, run_size: str, stage: Path,
                         lx: list[tuple[int, str]] | None = None) -> None:
    """The same VE file systems as :func:`_setup_mounts`, as the VE's root in its own
    user namespace.  proc and sysfs are mounted before the host's root is gone (the
    kernel lets a user namespace mount them only where they are already visible);
    the mount points are checked not to be links first.  No VE process runs yet."""
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
    # a mount made in this namespace: pivot_root refuses one copied from the host's
    libc.mount(str(root), str(root), None, libc.MS_BIND | libc.MS_REC)
    for name in ("proc", "sys", "dev"):
        if os.path.islink(root / name):
            raise VeError(f"the VE's /{name} is a symbolic link; it must be a directory",
                          hint="remove the link from the VE's private area")
        os.makedirs(root / name, exist_ok=True)
    nosuid = libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC
    libc.mount("proc", str(root / "proc"), "proc", nosuid)
    libc.mount("sysfs", str(root / "sys"), "sysfs", nosuid | libc.MS_RDONLY)
    lxcfs.bind(lx or [], str(root))          # (before the host's /proc/self goes)
    libc.mount(str(stage), str(root / "dev"), None, libc.MS_BIND)
    os.chdir(str(root))
    libc.pivot_root(".", ".")
    libc.umount2(".", libc.MNT_DETACH)
    os.chdir("/")
    # a mount (CRIU names it as an external one; a pty may be bound over it)
    libc.mount("/dev/console", "/dev/console", None, libc.MS_BIND)
    libc.mount("devpts", "/dev/pts", "devpts", libc.MS_NOSUID | libc.MS_NOEXEC,
               "newinstance,ptmxmode=0666,mode=620,gid=5")
    libc.mount("shm", "/dev/shm", "tmpfs", libc.MS_NOSUID | libc.MS_NODEV,
               "mode=1777,size=65536k")
    for name in _RO_PROC:
        if os.path.exists(f"/proc/{name}"):
            _mount_ro_bind(f"/proc/{name}")
    for name in _MASK_PROC:
        if os.path.exists(f"/proc/{name}"):
            libc.mount("/dev/null", f"/proc/{name}", None, libc.MS_BIND)
    # the VE's own cgroup2 subtree (its cgroup namespace's root), for its init
    libc.mount("cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid)
    libc.mount("tmpfs", _mountpoint("/run"), "tmpfs", libc.MS_NOSUID | libc.MS_NODEV,
               f"mode=755,{run_size}")


def _make_console(sock: int) -> None:
    """The VE's /dev/console: a pty of its own devpts, whose master goes to the host
    (the event helper keeps it and ``vzctl console`` attaches to it)."""
    import fcntl
    import socket
    import struct
    master = os.open("/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
        n = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, b"\0" * 4))[0]
        libc.mount(f"/dev/pts/{n}", "/dev/console", None, libc.MS_BIND)
        with socket.socket(fileno=os.dup(sock)) as s:
            socket.send_fds(s, [b"c"], [master])
    finally:
        os.close(master)
        os.close(sock)


TIOCSPTLCK = 0x40045431
TIOCGPTN = 0x80045430


def ve_env() -> dict[str, str]:
    return {"PATH": VE_PATH, "HOME": "/root", "TERM": os.environ.get("TERM", "linux"),
            "container": "vzpkg", "LANG": "C.UTF-8"}


def close_fds_except(keep: int) -> None:
    os.closerange(3, keep)
    os.closerange(keep + 1, 1 << 20)


def _init_child(spec: StartSpec, r_go: int, w_err: int) -> None:
    """Pid 1 of the VE, until it execs init (or spec.argv).  Never returns."""
    try:
        os.setsid()
        if spec.enter_cgroup is not None and spec.ids is None:
            spec.enter_cgroup()
        if os.read(r_go, 1) != b"1":
            os._exit(1)
        os.close(r_go)
        # we are in the VE's cgroup: it becomes our cgroup root
        libc.unshare(libc.CLONE_NEWCGROUP)
        lx = lxcfs.open_files(spec.lxcfs)
        if spec.ids is not None:
            assert spec.stage is not None
            _setup_mounts_userns(spec.stage / "root", spec.run_size, spec.stage / "dev", lx)
        else:
            _setup_mounts(spec.root, spec.run_size, lx)
        if spec.hostname:
            libc.sethostname(spec.hostname)
        if spec.console is not None:
            _make_console(spec.console)
        command = spec.argv is not None
        if spec.ids is None:
            caps.confine(no_new_privs=command)
        # (in a user namespace the VE's root keeps every capability there, and has
        # none over the host)
        # from here on: VE capabilities only; the VE's files may be read
        if spec.prepare is not None:
            spec.prepare()
        if spec.stdio is not None:
            for i, fd in enumerate(spec.stdio):
                os.dup2(fd, i)
        else:
            fd = os.open("/dev/null", os.O_RDWR)
            for i in range(3):
                os.dup2(fd, i)
        close_fds_except(w_err)
        if spec.argv is not None:
            os.execve(spec.argv[0], list(spec.argv), ve_env())
        if spec.init is not None and os.path.exists(spec.init):   # inside the VE
            os.execve(spec.init, [spec.init], ve_env())
        os.mkdir(os.path.dirname(INIT_PATH), 0o755)
        with open(INIT_PATH + ".new", "x", encoding="utf-8") as f:
            f.write(MINIMAL_INIT)   # /run is our own fresh tmpfs
        os.rename(INIT_PATH + ".new", INIT_PATH)
        os.execve("/bin/sh", ["/bin/sh", INIT_PATH], ve_env())
    except BaseException as exc:  # report anything to the host, then die
        msg = (str(exc) if isinstance(exc, OSError | VzError)
               else traceback.format_exc(limit=3))
        with contextlib.suppress(OSError):
            os.write(w_err, msg.encode(errors="replace")[:4000])
        os._exit(127)
    os._exit(127)


def wait_init_ready(pid: int, sig: int = signal.SIGTERM, timeout: float = 2.0) -> None:
    """Wait until init takes *sig* (its shutdown signal), so that a stop right after
    start is heard: pid 1 of a namespace ignores signals it has no handler for.  A
    blocked signal counts too (systemd reads its signals from a signalfd)."""
    bit = 1 << (sig - 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/status", encoding="ascii") as f:
                masks = 0
                for line in f:
                    if line.startswith(("SigBlk:", "SigCgt:")):
                        masks |= int(line.split()[1], 16)
                if masks & bit:
                    return
        except OSError:
            return
        time.sleep(0.0005)


def _read_until_exec(r_err: int, pid: int, ctid: int) -> bytes:
    """What pid 1 reported before its exec (b"" when exec succeeded); kills it and
    raises when it takes longer than :data:`SETUP_TIMEOUT`."""
    deadline = time.monotonic() + SETUP_TIMEOUT
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([r_err], [], [], left)[0]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            raise VeError(f"VE {ctid}: start timed out after {SETUP_TIMEOUT:.0f} s while "
                          "setting up the VE", hint="a file in the VE's /etc may be "
                          "something odd (a FIFO?); the VE was stopped again")
        chunk = os.read(r_err, 4000)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _spawn(spec: StartSpec, ready: Callable[[int], None], *, wait: bool) -> tuple[int, int]:
    """Fork the namespaces' parent and pid 1; (pid 1's host pid, the parent's pid).

    With *wait* the parent stays and exits with pid 1's status (run_command);
    otherwise it exits at once and pid 1 is reparented (a VE's init)."""
    r_pid, w_pid = os.pipe()
    r_go, w_go = os.pipe()
    r_err, w_err = os.pipe2(os.O_CLOEXEC)
    r_user, w_user = os.pipe2(os.O_CLOEXEC) if spec.ids is not None else (-1, -1)
    r_maps, w_maps = os.pipe2(os.O_CLOEXEC) if spec.ids is not None else (-1, -1)
    mid = os.fork()
    if mid == 0:
        try:
            os.close(r_pid)
            os.close(w_go)
            os.close(r_err)
            if spec.ids is not None:
                os.close(r_user)
                os.close(w_maps)
                _enter_user_ns(spec, w_user, r_maps)
            libc.unshare(libc.CLONE_NEWNS | libc.CLONE_NEWUTS | libc.CLONE_NEWIPC
                         | libc.CLONE_NEWNET | libc.CLONE_NEWPID)
            pid1 = os.fork()
            if pid1 == 0:
                os.close(w_pid)
                _init_child(spec, r_go, w_err)
            os.write(w_pid, str(pid1).encode())
            if not wait:
                os._exit(0)
            for fd in (w_pid, r_go, w_err):
                os.close(fd)
            _, status = os.waitpid(pid1, 0)
            os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status)
                     else 128 + os.WTERMSIG(status))
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.write(w_err, f"cannot create namespaces: {exc}".encode())
            os._exit(1)
    os.close(w_pid)
    os.close(r_go)
    os.close(w_err)
    if spec.ids is not None:
        os.close(w_user)
        os.close(r_maps)
        _write_maps(mid, spec.ids, r_user, w_maps)
    try:
        raw = os.read(r_pid, 32)
        if not wait:
            os.waitpid(mid, 0)
        if not raw:
            why = os.read(r_err, 4000).decode(errors="replace")
            if wait:
                os.waitpid(mid, 0)
            raise VeError(f"VE {spec.ctid}: start failed: {why or 'unknown error'}")
        pid = int(raw)
        try:
            ready(pid)
            with contextlib.suppress(BrokenPipeError):   # pid 1 failed: it says why
                os.write(w_go, b"1")
            os.close(w_go)
            w_go = -1
            err = _read_until_exec(r_err, pid, spec.ctid)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if wait:
                os.waitpid(mid, 0)
            raise
        if err:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if wait:
                os.waitpid(mid, 0)
            raise VeError(f"VE {spec.ctid}: start failed: {err.decode(errors='replace')}",
                          hint="the VE was stopped again; nothing is left running")
        return pid, mid
    finally:
        for fd in (r_pid, r_err, w_go):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)


def _enter_user_ns(spec: StartSpec, w_user: int, r_maps: int) -> None:
    """In the namespaces' parent, still host root: make the VE's /dev and put its
    root where the VE's root can reach it, in a mount namespace of our own (the
    host's sees neither), join the VE's cgroup (pid 1 inherits it), then make the
    user namespace, wait for the host to map it, and become its root."""
    assert spec.ids is not None and spec.stage is not None
    libc.unshare(libc.CLONE_NEWNS)
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
    _stage_dev(spec.stage / "dev", spec.ids)
    libc.mount(str(spec.root), str(spec.stage / "root"), None, libc.MS_BIND | libc.MS_REC)
    if spec.enter_cgroup is not None:
        spec.enter_cgroup()
    # the user namespace is made by the VE's own host uid, not by root: the kernel
    # charges what the VE's processes use per user (inotify instances and watches,
    # keys, namespaces) to a namespace's owner, so each VE gets its own allowance
    # instead of all VEs sharing root's (128 inotify instances end a host's boots)
    os.setgroups([])
    os.setresgid(spec.ids.base, spec.ids.base, spec.ids.base)
    os.setresuid(spec.ids.base, spec.ids.base, spec.ids.base)
    libc.unshare(libc.CLONE_NEWUSER)
    os.write(w_user, b"u")
    os.close(w_user)
    if os.read(r_maps, 1) != b"m":
        raise VeError("the host did not map the VE's user namespace")
    os.close(r_maps)
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)


def _write_maps(mid: int, ids: IdRange, r_user: int, w_maps: int) -> None:
    """On the host: map the user namespace *mid* made (once it says so)."""
    try:
        if os.read(r_user, 1) == b"u":
            for name in ("uid_map", "gid_map"):
                with open(f"/proc/{mid}/{name}", "w", encoding="ascii") as f:
                    f.write(ids.map_line())
            os.write(w_maps, b"m")
    except OSError:
        pass            # mid failed: it says why on the error pipe
    finally:
        os.close(r_user)
        os.close(w_maps)


def start_init(spec: StartSpec, ready: Callable[[int], None]) -> int:
    """Start the VE's init; *ready(pid)* joins cgroup and network before it runs.

    Returns init's host pid once init has been exec'd.
    """
    return _spawn(spec, ready, wait=False)[0]


def run_command(spec: StartSpec, ready: Callable[[int], None]) -> int:
    """Run *spec.argv* as pid 1 of fresh namespaces on a VE's root (a stopped VE):
    confined as a VE's init is, with no network but loopback, and no_new_privs.
    When it exits, the kernel ends whatever it started.  Returns its exit status
    (128+N for signal N)."""
    assert spec.argv is not None
    _, mid = _spawn(spec, ready, wait=True)
    while True:
        try:
            _, status = os.waitpid(mid, 0)
            return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128
        except InterruptedError:
            continue
