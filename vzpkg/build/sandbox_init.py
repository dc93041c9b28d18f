"""The first process of a build sandbox (run as a script; standard library only).

vzpkg.build.sandbox starts it as PID 1 of fresh pid, mount, uts and ipc namespaces
(``setpriv --pdeathsig KILL unshare --pid --mount --uts --ipc --fork
--kill-child``), with the interpreter's ``-I -S``::

    sandbox_init.py SPEC ROOT COMMAND...

SPEC is JSON (written by vzpkg.build.sandbox).  Two kinds of sandbox:

``ve``
    ROOT, a build tree, becomes ``/`` by pivot_root and the host's root is
    detached: no path, ``..`` or chroot trick leads out of the tree any more.
    The tree is mounted nosuid,nodev and gets /proc (its /proc/sys read-only,
    kernel knobs masked), a read-only /sys, a /dev of its own (tmpfs with the
    host's null, zero, full, random, urandom and tty, a private devpts and
    shm) and a tmpfs on /run.  Then the command runs (it is PID 1) with the
    bounded capabilities.

``tool``
    A host tool that installs packages (mmdebstrap, debootstrap, dnf) gets a
    root of its own (a tmpfs): the host's /usr and /etc read-only (secrets
    such as /etc/shadow and /etc/ssh masked), an empty /tmp, /run, /var, a
    /dev like the VE's, and read-write only the build's work directory (and
    the paths the spec names).  A package's maintainer script that climbs out
    of the chroot its package manager made finds that root, not the host's.
    ROOT, when given, gets the VE's mounts (proc, dev, ...) before the tool
    starts, or, with ``serve``, when the tool asks: this process stays PID 1,
    keeps its capabilities, runs the tool as its child with the bounded ones
    and answers ``mount`` / ``umount`` lines on the socket whose descriptor
    the tool finds in ``$VZPKG_SANDBOX_FD`` (mmdebstrap's hooks ask once its
    packages are unpacked: proc must not be mounted before base-files is).

The network namespace is the spec's ``net``: a descriptor of the build's own
namespace to enter (only loopback and the package proxy in it), ``new`` (an
empty one), or ``host``.

:func:`restrict` is also loaded by the pre-started dnf (vzpkg.build.backends.dnf),
which drops its capabilities and the network itself just before the RPM
transaction, after its downloads.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import socket
import sys
from collections.abc import Iterable, Sequence
from typing import Any

CAPS = ("chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid",
        "setuid", "setpcap", "linux_immutable", "net_bind_service", "net_broadcast",
        "net_admin", "net_raw", "ipc_lock", "ipc_owner", "sys_module", "sys_rawio",
        "sys_chroot", "sys_ptrace", "sys_pacct", "sys_admin", "sys_boot", "sys_nice",
        "sys_resource", "sys_time", "sys_tty_config", "mknod", "lease", "audit_write",
        "audit_control", "setfcap", "mac_override", "mac_admin", "syslog", "wake_alarm",
        "block_suspend", "audit_read", "perfmon", "bpf", "checkpoint_restore")

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
CLONE_NEWNET = 0x40000000
OPEN_TREE_CLONE = 1
AT_FDCWD, AT_EMPTY_PATH, AT_RECURSIVE = -100, 0x1000, 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 4
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 1, 2, 4
# new mount API: the same numbers on every architecture
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "loongarch64": 41,
                  "ppc64le": 203, "ppc64": 203, "s390x": 217, "i686": 217, "i386": 217,
                  "armv7l": 218, "armv6l": 218}
PR_CAPBSET_READ, PR_CAPBSET_DROP = 23, 24
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
CAP_VERSION_3 = 0x20080522

DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
# a tool's view of the host's /etc: what no package manager needs and no build
# script may read (masked by /dev/null or an empty read-only tmpfs)
ETC_MASKS = ("shadow", "shadow-", "gshadow", "gshadow-", "sudoers", "sudoers.d", "ssh",
             "ssl/private", "krb5.keytab", "security/opasswd", "vzpkg", "wireguard",
             "NetworkManager/system-connections", "letsencrypt")
# host directories a tool's root shows read-only (when they are directories; the
# merged-/usr links are copied as links)
SYSTEM_DIRS = ("usr", "etc", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
# in /proc: read-only, and masked
PROC_READONLY = ("sys", "sysrq-trigger", "irq", "bus")
PROC_MASKED = ("kcore", "keys", "timer_list", "sched_debug")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class SandboxError(OSError):
    pass


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise SandboxError(err, f"{what}: {os.strerror(err)}")
    return ret


# -- system calls -----------------------------------------------------------------------
def mount(src: str | None, target: str, fstype: str | None, flags: int,
          data: str | None = None) -> None:
    _check(_libc.mount(_b(src), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)),
           f"mount {fstype or src} on {target}")


def umount(target: str) -> None:
    _check(_libc.umount2(_b(target), MNT_DETACH), f"umount {target}")


def pivot_root(new: str, old: str) -> None:
    nr = SYS_PIVOT_ROOT.get(os.uname().machine)
    if nr is None:
        raise SandboxError(0, f"pivot_root: unknown system call number on {os.uname().machine}")
    _check(_libc.syscall(ctypes.c_long(nr), _b(new), _b(old)), f"pivot_root {new}")


def clone_tree(path: str, *, recursive: bool = False, readonly: bool = False) -> int:
    """A detached copy of the mount at *path* (a bind mount not attached yet)."""
    flags = OPEN_TREE_CLONE | os.O_CLOEXEC | (AT_RECURSIVE if recursive else 0)
    fd = _check(_libc.syscall(ctypes.c_long(SYS_OPEN_TREE), ctypes.c_int(AT_FDCWD),
                              _b(path), ctypes.c_uint(flags)), f"open_tree {path}")
    if readonly:
        attr = _MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0, 0, 0)
        at = AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)
        _check(_libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(fd), b"",
                             ctypes.c_uint(at), ctypes.byref(attr),
                             ctypes.c_size_t(ctypes.sizeof(attr))),
               f"mount_setattr {path}")
    return fd


def attach(fd: int, target: str) -> None:
    """Attach a detached mount (from :func:`clone_tree`) at *target*."""
    try:
        _check(_libc.syscall(ctypes.c_long(SYS_MOVE_MOUNT), ctypes.c_int(fd), b"",
                             ctypes.c_int(AT_FDCWD), _b(target),
                             ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)), f"move_mount {target}")
    finally:
        os.close(fd)


def bind(src: str, target: str, *, readonly: bool = False, recursive: bool = False) -> None:
    attach(clone_tree(src, recursive=recursive, readonly=readonly), target)


def enter_net(fd: int) -> None:
    _check(_libc.setns(fd, CLONE_NEWNET), "setns (network)")


def new_net() -> None:
    _check(_libc.unshare(CLONE_NEWNET), "unshare (network)")


def cap_numbers(names: Iterable[str]) -> set[int]:
    return {CAPS.index(n) for n in names}


def drop_caps(keep: Iterable[str]) -> None:
    """Bound this process and everything it starts to the capabilities *keep*:
    the bounding set (what a root program gets at exec), the permitted and
    effective sets; nothing inheritable or ambient."""
    kept = cap_numbers(keep)
    setpcap = CAPS.index("setpcap")
    for cap in range(64):
        if _libc.prctl(PR_CAPBSET_READ, ctypes.c_ulong(cap), 0, 0, 0) < 0:
            break                                   # past the kernel's last one
        if cap not in kept and cap != setpcap:
            _check(_libc.prctl(PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0),
                   f"dropping capability {cap}")
    if setpcap not in kept:
        _check(_libc.prctl(PR_CAPBSET_DROP, ctypes.c_ulong(setpcap), 0, 0, 0),
               "dropping capability setpcap")
    _libc.prctl(PR_CAP_AMBIENT, ctypes.c_ulong(PR_CAP_AMBIENT_CLEAR_ALL), 0, 0, 0)
    hdr = _CapHeader(CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(hdr), data), "capget")
    for i in range(2):
        mask = sum(1 << (c - 32 * i) for c in kept if 32 * i <= c < 32 * (i + 1))
        data[i].effective &= mask
        data[i].permitted &= mask
        data[i].inheritable = 0
    _check(_libc.capset(ctypes.byref(hdr), data), "capset")


def scratch(paths: Iterable[str], upper: str = "/run/vzpkg-scratch") -> None:
    """Cover each of *paths* with an overlay whose writes go to a tmpfs
    directory below *upper* and are thrown away: what is there stays readable,
    and nothing there can be changed (a shared cache, say)."""
    for i, path in enumerate(paths):
        top = f"{upper}/{i}"
        makedirs(f"{top}/upper", 0o755)
        makedirs(f"{top}/work", 0o700)
        mount("vzpkg-scratch", path, "overlay", MS_NOSUID | MS_NODEV,
              f"lowerdir={path},upperdir={top}/upper,workdir={top}/work")


def restrict(keep: Iterable[str] | None, *, network: bool = False,
             scratch_paths: Iterable[str] = ()) -> None:
    """Cut this process off the network (a new, empty namespace) when
    *network*, :func:`scratch` *scratch_paths*, then keep only the
    capabilities *keep* (all if None)."""
    if network:
        new_net()
    scratch(scratch_paths)
    if keep is not None:
        drop_caps(keep)


# -- building the views -------------------------------------------------------------------
def makedirs(path: str, mode: int = 0o755) -> None:
    os.makedirs(path, mode=mode, exist_ok=True)


def mirror_dirs(stage: str, path: str) -> None:
    """Make the directories of host *path* below *stage*, each with the mode and
    owner the host's has (a tool sees the same permissions on the way there:
    apt, say, checks whether its _apt user could reach the tree)."""
    parts = [p for p in path.split("/") if p]
    for i in range(1, len(parts) + 1):
        host = "/" + "/".join(parts[:i])
        inside = stage + host
        if os.path.lexists(inside):
            continue
        st = os.stat(host)
        os.mkdir(inside)
        os.chown(inside, st.st_uid, st.st_gid)
        os.chmod(inside, st.st_mode & 0o7777)


def touch(path: str) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))


def protect_proc(proc: str) -> None:
    """Read-only /proc/sys (and the like) and masked kernel files: a root
    process in the sandbox changes no host-wide setting."""
    for name in PROC_READONLY:
        p = f"{proc}/{name}"
        if os.path.exists(p):
            mount(p, p, None, MS_BIND | MS_REC)
            mount(None, p, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV
                  | MS_NOEXEC)
    null = os.path.join(os.path.dirname(proc), "dev/null")
    for name in PROC_MASKED:
        p = f"{proc}/{name}"
        if os.path.isfile(p):
            bind(null, p, readonly=True)


def host_nodes(host_dev: str = "/dev") -> dict[str, int]:
    """The standard device nodes of *host_dev* as detached mounts."""
    return {n: clone_tree(f"{host_dev}/{n}") for n in DEV_NODES}


def make_dev(dev: str, nodes: dict[str, int], *, extra: Sequence[str],
             links: Sequence[str]) -> None:
    """A /dev of its own at *dev*: a small tmpfs with the standard *nodes*
    (detached mounts of the host's, see :func:`host_nodes`) attached; *extra*
    among pts (private devpts, /dev/ptmx) and shm; *links* among fd, stdin,
    stdout, stderr."""
    makedirs(dev)
    mount("dev", dev, "tmpfs", MS_NOSUID, "mode=755,size=64k")
    for n in DEV_NODES:
        touch(f"{dev}/{n}")
        attach(nodes.pop(n), f"{dev}/{n}")
    if "pts" in extra:
        makedirs(f"{dev}/pts")
        mount("devpts", f"{dev}/pts", "devpts", MS_NOSUID | MS_NOEXEC,
              "newinstance,ptmxmode=0666,mode=620")
        os.symlink("pts/ptmx", f"{dev}/ptmx")
    if "shm" in extra:
        makedirs(f"{dev}/shm")
        mount("shm", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    targets = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0",
               "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"}
    for name in links:
        os.symlink(targets[name], f"{dev}/{name}")


class TreeMounts:
    """The VE's mounts in a tree (ROOT of a tool, or / of a VE), as the spec's
    ``tree`` says: which of proc, sys, dev, run; /dev's extras and links; bind
    mounts (source, path in the tree, read-only)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.mounts: list[str] = list(spec.get("mounts", ()))
        self.dev_extra: list[str] = list(spec.get("dev_extra", ()))
        self.dev_links: list[str] = list(spec.get("dev_links", ()))
        self.binds: list[tuple[str, str, bool]] = [tuple(b) for b in spec.get("binds", ())]
        self.done: list[str] = []          # mount points, in the order they were made
        self.made: list[str] = []          # directories made for bind mounts

    def clone_binds(self) -> list[tuple[int, str]]:
        """The bind sources as detached mounts (taken while the host's paths are
        still reachable)."""
        return [(clone_tree(src, readonly=ro, recursive=True), rel) for src, rel, ro in self.binds]

    def apply(self, tree: str, nodes: dict[str, int] | None = None,
              clones: list[tuple[int, str]] | None = None) -> None:
        """Make the mounts in *tree*; the device nodes and bind sources are taken
        from the host's paths now unless given as detached mounts."""
        t = tree.rstrip("/")
        for name in ("proc", "sys", "dev", "run"):
            if name in self.mounts:
                makedirs(f"{t}/{name}")
        if "dev" in self.mounts:
            make_dev(f"{t}/dev", host_nodes() if nodes is None else nodes,
                     extra=self.dev_extra, links=self.dev_links)
            self.done.append(f"{t}/dev")
        if "proc" in self.mounts:
            mount("proc", f"{t}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            self.done.append(f"{t}/proc")
            protect_proc(f"{t}/proc")
        if "sys" in self.mounts:
            mount("sysfs", f"{t}/sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
            self.done.append(f"{t}/sys")
        if "run" in self.mounts:
            mount("run", f"{t}/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=755")
            self.done.append(f"{t}/run")
        if clones is None:
            clones = self.clone_binds()
        for fd, rel in clones:
            target = f"{t}/{rel.strip('/')}"
            if not os.path.isdir(target):
                makedirs(target)
                self.made.append(target)
            attach(fd, target)
            self.done.append(target)

    def remove(self) -> None:
        for target in reversed(self.done):
            umount(target)
        self.done.clear()
        for d in reversed(self.made):
            os.rmdir(d)
        self.made.clear()


def ve(spec: dict[str, Any], root: str) -> None:
    """Make *root* the root of this mount namespace with the VE's mounts."""
    tree = TreeMounts(spec.get("tree") or {})
    clones = tree.clone_binds()
    nodes = host_nodes()
    mount(root, root, None, MS_BIND | MS_REC)
    mount(None, root, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV)
    os.chdir(root)
    pivot_root(".", ".")        # the old root is stacked on the new one ...
    umount(".")                 # ... and detached from it
    os.chdir("/")
    makedirs("/tmp", 0o1777)
    tree.apply("/", nodes, clones)


def tool(spec: dict[str, Any], tree: str) -> TreeMounts | None:
    """Make a root for a host tool (see the module docstring) and pivot into it;
    the tree's mounts are made now unless the spec says ``serve``."""
    stage = spec["stage"]
    makedirs(stage, 0o700)
    mount("vzpkg-tool", stage, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755")
    for name in sorted(os.listdir("/")):
        if os.path.islink(f"/{name}"):
            os.symlink(os.readlink(f"/{name}"), f"{stage}/{name}")
    for name in SYSTEM_DIRS:
        if os.path.isdir(f"/{name}") and not os.path.islink(f"/{name}"):
            makedirs(f"{stage}/{name}")
            bind(f"/{name}", f"{stage}/{name}", readonly=True, recursive=True)
    makedirs(f"{stage}/var/lib")
    makedirs(f"{stage}/var/tmp", 0o1777)
    os.chmod(f"{stage}/var/tmp", 0o1777)
    if os.path.isdir("/var/lib/dpkg"):
        makedirs(f"{stage}/var/lib/dpkg")
        bind("/var/lib/dpkg", f"{stage}/var/lib/dpkg", readonly=True)
    for name, mode in (("tmp", "1777"), ("run", "755")):
        makedirs(f"{stage}/{name}")
        mount(name, f"{stage}/{name}", "tmpfs", MS_NOSUID | MS_NODEV, f"mode={mode}")
    makedirs(f"{stage}/root", 0o700)
    make_dev(f"{stage}/dev", host_nodes(), extra=("pts", "shm"),
             links=("fd", "stdin", "stdout", "stderr"))
    for name in ETC_MASKS:
        p = f"/etc/{name}"
        if os.path.islink(p) or not os.path.exists(p):
            continue
        if os.path.isdir(p):
            mount("masked", f"{stage}{p}", "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV,
                  "size=4k,mode=755")
        else:
            bind("/dev/null", f"{stage}{p}", readonly=True)
    resolv = os.path.realpath("/etc/resolv.conf")
    if os.path.isfile(resolv) and not resolv.startswith(("/etc/", "/usr/")):
        makedirs(os.path.dirname(f"{stage}{resolv}"))
        touch(f"{stage}{resolv}")
        bind(resolv, f"{stage}{resolv}", readonly=True)
    flags = MS_NOSUID | (MS_NODEV if spec.get("nodev", True) else 0)
    for path in sorted(spec.get("rw", ()), key=len):
        mirror_dirs(stage, path)
        mount(path, f"{stage}{path}", None, MS_BIND | MS_REC)
        mount(None, f"{stage}{path}", None, MS_REMOUNT | MS_BIND | flags)
    for path in sorted(spec.get("ro", ()), key=len):
        mirror_dirs(stage, path)
        bind(path, f"{stage}{path}", readonly=True, recursive=True)
    for src, target in spec.get("files", ()):
        bind(src, f"{stage}{target}", readonly=True)
    os.mkdir(f"{stage}/.old", 0o700)
    pivot_root(stage, f"{stage}/.old")
    os.chdir("/")
    umount("/.old")
    os.rmdir("/.old")
    makedirs("/proc")
    makedirs("/sys")
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    protect_proc("/proc")
    mount("sysfs", "/sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    if not tree:
        return None
    mounts = TreeMounts(spec.get("tree") or {})
    if not spec.get("serve"):
        mounts.apply(tree)
    scratch(spec.get("scratch", ()))
    return mounts


def serve(sock: socket.socket, child: int, tree: str, mounts: TreeMounts) -> int:
    """PID 1 of a tool's sandbox: make or remove the tree's mounts when the tool
    asks (once each), reap orphans, and end with the tool's status."""
    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)
    signal.set_wakeup_fd(wfd)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    answered: set[str] = set()
    buf = b""
    listening = True
    while True:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return 0
            if pid == 0:
                break
            if pid == child:
                return os.waitstatus_to_exitcode(status)
        waiting: list[int] = [sock.fileno(), rfd] if listening else [rfd]
        ready, _, _ = select.select(waiting, [], [])
        if rfd in ready:
            os.read(rfd, 512)
        if sock.fileno() not in ready:
            continue
        data = sock.recv(512)
        if not data:
            listening = False
            continue
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            sock.sendall(_answer(line.decode("ascii", "replace").strip(), answered,
                                 tree, mounts).encode() + b"\n")


def _answer(what: str, answered: set[str], tree: str, mounts: TreeMounts) -> str:
    if what not in ("mount", "umount") or what in answered:
        return f"refused: {what!r}"
    answered.add(what)
    try:
        if what == "mount":
            mounts.apply(tree)
        else:
            mounts.remove()
    except OSError as exc:
        return f"failed: {exc}"
    return "ok"


def main(args: Sequence[str]) -> int:
    spec: dict[str, Any] = json.loads(args[0])
    root, argv = args[1], list(args[2:])
    net = spec.get("net", "host")
    if isinstance(net, int):
        enter_net(net)
        os.close(net)
    elif net == "new":
        new_net()
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mounts = None
    if spec["kind"] == "ve":
        ve(spec, root)
    else:
        mounts = tool(spec, root)
    if spec.get("hostname"):
        name = spec["hostname"].encode()
        _check(_libc.sethostname(name, len(name)), "sethostname")
    keep = spec.get("caps")
    if spec.get("serve") and mounts is not None:
        parent, child_end = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            parent.close()
            os.set_inheritable(child_end.fileno(), True)
            os.environ["VZPKG_SANDBOX_FD"] = str(child_end.fileno())
            _exec(argv, keep, spec)
        child_end.close()
        return serve(parent, pid, root, mounts)
    _exec(argv, keep, spec)
    return 127


def _exec(argv: list[str], keep: list[str] | None, spec: dict[str, Any]) -> None:
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):    # as a shell would start it
        signal.signal(sig, signal.SIG_DFL)
    if keep is not None:
        drop_caps(keep)
    if spec.get("wait"):            # made ahead: start on a line on stdin, EOF = never
        line = b""
        while not line.endswith(b"\n"):
            chunk = os.read(0, 1)
            if not chunk:
                os._exit(0)
            line += chunk
    os.chdir(spec.get("cwd", "/"))
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"vzpkg sandbox: cannot run {argv[0]}: {exc.strerror}", file=sys.stderr,
              flush=True)
        os._exit(127)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except OSError as exc:
        print(f"vzpkg sandbox: {exc}", file=sys.stderr, flush=True)
        sys.exit(125)
