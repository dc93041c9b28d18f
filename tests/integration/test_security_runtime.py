"""Regression tests for the escapes a review found in the runtime (docs/SECURITY.md).

Each plants what a hostile VE root would (a binary, a FIFO, a link) and checks
that the host stays out of reach.  `veprobe` (tests/probe/veprobe.c, built
static here) makes the system calls busybox cannot.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime_helpers import destroy_all, enter_session, runtime_for, sh
from vzpkg.runtime import caps
from vzpkg.runtime.ve import Runtime

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

BIN = Path(sys.executable).parent
PROBE_SRC = Path(__file__).resolve().parents[1] / "probe" / "veprobe.c"
NSES = ("net", "pid", "mnt", "ipc", "uts", "cgroup")

# A /bin/sh for the VE that records, for every run, what the process holds:
# capabilities, seccomp, no_new_privs, namespaces, cgroups; then runs the real sh.
RECORDING_SH = r"""#!/bin/busybox sh
d=/var/log/vzprobe
/bin/busybox mkdir -p $d
f=$(/bin/busybox mktemp $d/sh.XXXXXX)
{
  echo "ARGS $*"
  /bin/busybox grep -E '^(CapEff|CapBnd|Seccomp|NoNewPrivs):' /proc/self/status
  for n in NSES; do echo "NS $n $(/bin/busybox readlink /proc/self/ns/$n)"; done
} > $f 2>&1
exec /bin/busybox sh "$@"
""".replace("NSES", " ".join(NSES))

# ssh-keygen as a hostile cache ships it: try the host disk, record what it held.
HOSTILE_KEYGEN = r"""#!/bin/busybox sh
f=/var/log/vzprobe/keygen
/bin/busybox mkdir -p /var/log/vzprobe
/bin/busybox grep -E '^(CapEff|CapBnd|Seccomp):' /proc/self/status > $f
if /bin/busybox mknod /tmp/hostdisk b 8 0 2>>$f; then echo MKNOD-OK >> $f; fi
if /bin/busybox mount -t tmpfs x /mnt 2>>$f; then echo MOUNT-OK >> $f; fi
echo done >> $f
"""


def _mask(line: str) -> int:
    return int(line.split()[1], 16)


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build tests/probe/veprobe.c (tools/install-system-deps)")
    out = tmp_path_factory.mktemp("probe") / "veprobe"
    subprocess.run(["gcc", "-static", "-O", "-o", str(out), str(PROBE_SRC)], check=True)
    return out


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    r = runtime_for(tmp_path_factory.mktemp("sec"))
    yield r
    destroy_all(r)


def vzctl(rt: Runtime, *args: str, timeout: float = 60, **kw: object
          ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VZ_ROOT": str(rt.paths.root)}
    opts: dict[str, object] = {"capture_output": True, "text": True, **kw}
    r: subprocess.CompletedProcess[str] = subprocess.run(  # type: ignore[call-overload]
        [str(BIN / "vzctl"), *args], env=env, timeout=timeout, check=False, **opts)
    return r


def plant(rt: Runtime, ctid: int, rel: str, text: str | bytes, mode: int = 0o755) -> None:
    """Write a file into a plain VE's private area (as the VE's root could)."""
    p = rt.paths.private(ctid) / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.is_symlink() or p.exists():
        p.unlink()
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    p.chmod(mode)


def records(rt: Runtime, ctid: int) -> dict[str, str]:
    d = rt.paths.private(ctid) / "var/log/vzprobe"
    return {p.name: p.read_text() for p in sorted(d.iterdir())} if d.is_dir() else {}


def host_ns() -> dict[str, str]:
    return {n: os.readlink(f"/proc/self/ns/{n}") for n in NSES}


def test_no_ve_binary_ever_runs_with_host_privileges(rt: Runtime) -> None:
    """The class of item 1 (and 3): at start (init, and ssh-keygen for the first
    start), exec, exec2, and a password change on a stopped VE, every process
    the VE's own binaries make holds the VE's capabilities only, runs under the
    seccomp filter and in none of the host's namespaces."""
    ctid = 9501
    rt.create(ctid, "busybox-1", hostname="rec", userns=False)   # the old mode
    plant(rt, ctid, "bin/sh", RECORDING_SH)
    plant(rt, ctid, "usr/bin/ssh-keygen", HOSTILE_KEYGEN)
    (rt.paths.private(ctid) / "etc/ssh").mkdir(exist_ok=True)
    try:
        r = vzctl(rt, "start", str(ctid))
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 20
        keygen = rt.paths.private(ctid) / "var/log/vzprobe/keygen"
        while not (keygen.exists() and "done" in keygen.read_text()):
            assert time.monotonic() < deadline, "ssh-keygen never ran at first start"
            time.sleep(0.1)
        assert vzctl(rt, "exec", str(ctid), "true").returncode == 0
        assert vzctl(rt, "exec2", str(ctid), "/bin/sh", "-c", "true").returncode == 0
        assert vzctl(rt, "stop", str(ctid)).returncode == 0
        r = vzctl(rt, "set", str(ctid), "--userpasswd", "root:pw")  # stopped: own sandbox
        assert r.returncode == 0, r.stderr
    finally:
        vzctl(rt, "stop", str(ctid), "--fast")
    recs = records(rt, ctid)
    kg = recs.pop("keygen")
    assert "MKNOD-OK" not in kg and "MOUNT-OK" not in kg, kg
    ve = caps.ve_mask()
    mine = host_ns()
    kinds = {"init": False, "exec": False, "chpasswd": False}
    for name, text in {"keygen": kg, **recs}.items():
        fields = dict(ln.split(":", 1) for ln in text.splitlines() if ":" in ln
                      and not ln.startswith(("ARGS", "NS")))
        assert _mask(f"x {fields['CapBnd'].strip()}") == ve, (name, text)
        assert _mask(f"x {fields['CapEff'].strip()}") & ~ve == 0, (name, text)
        assert fields["Seccomp"].strip() == "2", (name, text)
        for ln in text.splitlines():
            if ln.startswith("NS "):
                _, n, link = ln.split(" ", 2)
                assert link and link != mine[n], (name, n, text)
        args = text.splitlines()[0] if text.startswith("ARGS") else ""
        kinds["init"] |= "/run/vzctl/init" in args
        kinds["exec"] |= args.strip() == "ARGS -c true"
        kinds["chpasswd"] |= "chpasswd" in args
    assert all(kinds.values()), (kinds, list(recs))
    rt.destroy(ctid)


def _add_host_key(payload: bytes) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    serial = libc.syscall(248 if os.uname().machine == "x86_64" else 217,
                          b"user", b"vzpkg-host-secret", payload, len(payload),
                          ctypes.c_int(-4))   # KEY_SPEC_USER_KEYRING
    assert serial > 0, os.strerror(ctypes.get_errno())
    return int(serial)


def _revoke(serial: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall(250 if os.uname().machine == "x86_64" else 219, 3, serial)  # KEYCTL_REVOKE


def _start_with_probe(rt: Runtime, ctid: int, probe: Path) -> None:
    """A VE in the old mode (VE_USERNS=no), whose defences these tests check: in a
    user namespace the VE's root has its own keyrings, ptys and nested namespaces
    (tests/integration/test_ve_userns.py)."""
    rt.create(ctid, "busybox-1", userns=False)
    shutil.copy2(probe, rt.paths.private(ctid) / "bin/veprobe")
    rt.start(ctid)


def test_keyrings_are_out_of_reach(rt: Runtime, probe: Path) -> None:
    """Item 4: the host root's user keyring is shared by uid; a VE reads none of
    it and adds nothing to it."""
    ctid = 9502
    serial = _add_host_key(b"host-root-only")
    try:
        _start_with_probe(rt, ctid, probe)
        code, out = sh(rt, ctid, f"/bin/veprobe keyring {serial}")
        assert code == 0, out
        assert "host-root-only" not in out, out
        assert "read err 38" in out and "add err 38" in out, out   # ENOSYS
    finally:
        _revoke(serial)
        with contextlib.suppress(Exception):
            rt.destroy(ctid)


def test_no_nested_user_namespace_and_own_cgroup_root(rt: Runtime, probe: Path) -> None:
    """Item 5: no user namespace can be made inside a VE (the way to mount cgroup
    controllers and lift its limits); the VE sees its cgroups as its root."""
    ctid = 9503
    try:
        _start_with_probe(rt, ctid, probe)
        code, out = sh(rt, ctid, "/bin/veprobe userns")
        assert code == 0, out
        assert "mount ok" not in out, out
        assert "unshare err 1" in out, out          # EPERM
        assert "clone3 err 38" in out, out          # ENOSYS: libc falls back to clone
        _, out = sh(rt, ctid, "cat /proc/self/cgroup")
        lines = [ln for ln in out.splitlines() if ln.strip()]
        assert lines and all(ln.endswith(":/") for ln in lines), out
    finally:
        with contextlib.suppress(Exception):
            rt.destroy(ctid)


def _ctty(fd: int) -> None:
    os.setsid()
    import fcntl
    import termios
    fcntl.ioctl(fd, termios.TIOCSCTTY, 0)


def test_exec_never_hands_the_terminal_to_the_ve(rt: Runtime, probe: Path) -> None:
    """Item 2: from an administrator's terminal, a VE command's TIOCSTI reaches no
    host shell: the command has a pty of the VE's own in a session of its own."""
    ctid = 9504
    master, slave = os.openpty()
    try:
        _start_with_probe(rt, ctid, probe)
        r = vzctl(rt, "exec2", str(ctid), "/bin/veprobe", "tiocsti", stdin=slave,
                  stdout=slave, stderr=slave, text=False, capture_output=False,
                  preexec_fn=lambda: _ctty(slave))
        out = b""
        while select.select([master], [], [], 0.5)[0]:
            out += os.read(master, 4096)
        text = out.decode(errors="replace")
        assert "tiocsti-0" in text, text
        assert "tiocsti-0 ok" not in text and "tiocsti-1 ok" not in text, text
        # nothing was pushed into the administrator's terminal input
        os.set_blocking(slave, False)
        injected = b""
        with contextlib.suppress(BlockingIOError):
            injected = os.read(slave, 100)
        assert b"Z" not in injected, injected
        assert r.returncode == 0
        # the command's terminal is the VE's own
        r = vzctl(rt, "exec", str(ctid), "readlink /proc/self/fd/0; tty", stdin=slave,
                  stdout=slave, stderr=slave, text=False, capture_output=False,
                  preexec_fn=lambda: _ctty(slave))
        out = b""
        while select.select([master], [], [], 0.5)[0]:
            out += os.read(master, 4096)
        assert b"/dev/pts/0" in out, out
    finally:
        os.close(master)
        os.close(slave)
        with contextlib.suppress(Exception):
            rt.destroy(ctid)


def _inotify_opens(path: Path) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK)
    assert fd >= 0
    assert libc.inotify_add_watch(fd, str(path).encode(), 0x20) >= 0   # IN_OPEN
    return int(fd)


def test_enter_follows_no_link_of_the_ve(rt: Runtime, tmp_path: Path) -> None:
    """Item 6: a VE whose init chroots into a tree holding dev/pts/ptmx -> a host
    path: `vzctl enter` still opens its terminal inside the VE, never the file."""
    ctid = 9505
    target = tmp_path / "host-file"
    target.write_text("host data\n")
    rt.create(ctid, "busybox-1", hostname="trap")
    evil = rt.paths.private(ctid) / "evil"
    (evil / "dev/pts").mkdir(parents=True)
    (evil / "bin").mkdir()
    os.link(rt.paths.private(ctid) / "bin/busybox", evil / "bin/busybox")
    (evil / "dev/pts/ptmx").symlink_to(target)
    plant(rt, ctid, "bin/sh", "#!/bin/busybox sh\n"
          'case "$1" in /run/vzctl/init) exec /bin/busybox chroot /evil '
          "/bin/busybox sleep 100000;; esac\n"
          'exec /bin/busybox sh "$@"\n')
    rt.start(ctid)
    ino = _inotify_opens(target)
    try:
        _, text = enter_session(rt, ctid, b"echo marker-$((6*7)); exit\n")
        assert "Traceback" not in text, text
        assert "marker-42" in text, text
        with contextlib.suppress(BlockingIOError):
            events = os.read(ino, 4096)
            pytest.fail(f"the host file was opened through the VE's link: {events!r}")
        assert target.read_text() == "host data\n"
    finally:
        os.close(ino)
        vzctl(rt, "stop", str(ctid), "--fast")
        rt.destroy(ctid)


def test_stopped_ve_command_stays_in_a_sandbox(rt: Runtime) -> None:
    """Item 3: the VE's chpasswd, run for a stopped VE, reaches no host service on
    127.0.0.1, kills no host process, and leaves nothing running."""
    ctid = 9506
    rt.create(ctid, "busybox-1")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    port = listener.getsockname()[1]
    victim = subprocess.Popen(["sleep", "600"])
    plant(rt, ctid, "usr/sbin/chpasswd",
          "#!/bin/sh\n"
          f"echo pwned | nc -w 2 127.0.0.1 {port}\n"
          f"kill -9 {victim.pid}\n"
          "sleep 31337 &\n"
          "exit 0\n")
    try:
        r = vzctl(rt, "set", str(ctid), "--userpasswd", "root:pw")
        assert r.returncode == 0, r.stderr
        listener.settimeout(1.0)
        with pytest.raises(TimeoutError):
            conn, _ = listener.accept()
            conn.close()
        assert victim.poll() is None, "the VE's command killed a host process"
        time.sleep(0.2)
        left = [p for p in os.listdir("/proc") if p.isdigit()
                and _cmdline(p) == b"sleep\x0031337\x00"]
        assert not left, "a process of the VE's command outlived it"
        assert not rt.cgroups.procs(str(ctid))
    finally:
        victim.kill()
        victim.wait()
        listener.close()
        rt.destroy(ctid)


def _cmdline(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def test_planted_fifos_hang_neither_set_nor_start(rt: Runtime) -> None:
    """Item 9: FIFOs at the names `set --hostname` and start write through (and
    read) neither hang them nor leave anything behind."""
    ctid = 9507
    rt.create(ctid, "busybox-1", hostname="before")
    rt.start(ctid)
    try:
        code, out = sh(rt, ctid, "rm -f /etc/hosts && mkfifo /etc/hostname.vztmp "
                                 "/etc/hosts /etc/hosts.vztmp /etc/resolv.conf.vztmp")
        assert code == 0, out
        r = vzctl(rt, "set", str(ctid), "--hostname", "after", "--nameserver", "10.0.0.1",
                  "--save", timeout=40)
        assert r.returncode == 0, r.stderr
        assert sh(rt, ctid, "hostname")[1].strip() == "after"
        assert sh(rt, ctid, "rm -f /etc/hosts && mkfifo /etc/hosts /etc/hostname.vztmp")[0] == 0
        r = vzctl(rt, "restart", str(ctid), timeout=60)
        assert r.returncode == 0, r.stderr
        code, out = sh(rt, ctid, "cat /etc/hosts; hostname")
        assert "after" in out, out
    finally:
        rt.destroy(ctid)


def test_dev_is_nodev_and_run_is_sized_per_ve(rt: Runtime) -> None:
    """Hardening: a device node that turns up in the VE's /dev (here made by the
    host through /proc/PID/root; a VE cannot mknod) cannot be opened, even one the
    devices cgroup allows, while the standard nodes work; /run is a fifth of the
    VE's RAM limit."""
    ctid = 9508
    rt.create(ctid, "busybox-1")
    assert vzctl(rt, "set", str(ctid), "--ram", "100M", "--save").returncode == 0
    pid = rt.start(ctid)
    try:
        os.mknod(f"/proc/{pid}/root/dev/extra-null", 0o666 | 0o020000, os.makedev(1, 3))
        code, out = sh(rt, ctid, "echo x > /dev/extra-null")
        assert code != 0 and "denied" in out, out
        code, out = sh(rt, ctid, "echo x > /dev/null && head -c 4 /dev/zero | wc -c && "
                                 "grep ' /run ' /proc/mounts")
        assert code == 0, out
        assert "size=20480k" in out, out
    finally:
        rt.destroy(ctid)


def test_an_address_is_never_given_to_two_ves(rt: Runtime) -> None:
    """Item 13 (and the design's rule): create and set refuse an address another VE
    of the root has, running or not; nothing is made or changed."""
    rt.create(9509, "busybox-1", ipadd=["198.18.95.1"])
    try:
        r = vzctl(rt, "create", "9510", "--ostemplate", "busybox-1", "--ipadd", "198.18.95.1")
        assert r.returncode != 0 and "198.18.95.1" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        assert not rt.paths.conf(9510).exists() and not rt.paths.private(9510).exists()
        rt.create(9510, "busybox-1")
        r = vzctl(rt, "set", "9510", "--ipadd", "198.18.95.1", "--save")
        assert r.returncode != 0 and "198.18.95.1" in r.stderr, r.stderr
        assert "198.18.95.1" not in rt.paths.conf(9510).read_text()
    finally:
        rt.destroy(9509)
        with contextlib.suppress(Exception):
            rt.destroy(9510)


def test_the_kernel_log_is_refused_in_the_old_mode_too(rt: Runtime) -> None:
    """A VE in the old mode (VE_USERNS=no) cannot read the host's kernel log, and is
    told so: the kernel refuses /proc/kmsg (CAP_SYSLOG and CAP_SYS_ADMIN are out of
    its bounding set).  Masked with /dev/null, it read as an endless EOF, on which
    rsyslog's imklog spins."""
    ctid = 9511
    rt.create(ctid, "busybox-1", userns=False)
    rt.start(ctid)
    try:
        _, out = sh(rt, ctid, "grep -c ' /proc/kmsg ' /proc/mounts; "
                                 "head -c1 /proc/kmsg; echo rc=$?")
        assert out.splitlines()[0] == "0", out         # nothing mounted over it
        assert "rc=0" not in out, out
        assert "not permitted" in out or "ermission denied" in out, out
    finally:
        rt.destroy(ctid)
