"""User-namespaced VEs (the default): the VE's root is an unprivileged host id range
of its own.  Inside, it has every capability (it mounts, it owns its files); over
the host it has none.  Files on disk stay as the cache has them."""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime_helpers import destroy_all, runtime_for, sh
from vzpkg.runtime import idmap, layout
from vzpkg.runtime.ve import Runtime

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

A, B = 9601, 9602
ALL_CAPS = (1 << 41) - 1          # CAP_CHOWN .. CAP_CHECKPOINT_RESTORE


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    r = runtime_for(tmp_path_factory.mktemp("userns"))
    r.create(A, "busybox-1", hostname="usa")
    r.create(B, "busybox-1", hostname="usb", layout_name="overlay")
    for ctid in (A, B):
        r.start(ctid)
    yield r
    destroy_all(r)


def _ids(rt: Runtime, ctid: int) -> idmap.IdRange:
    text = rt.config(ctid).get("VE_IDMAP")
    assert text, "a VE made by default has a recorded id range"
    return idmap.IdRange.parse(text, where="test")


def test_each_ve_has_its_own_disjoint_range(rt: Runtime) -> None:
    a, b = _ids(rt, A), _ids(rt, B)
    assert a.count == b.count == 65536
    assert not a.overlaps(b)
    assert rt.config(A).get("VE_USERNS") == "yes"


def test_the_ves_root_is_its_range_on_the_host(rt: Runtime) -> None:
    pid = rt.init_pid(A)
    status = Path(f"/proc/{pid}/status").read_text()
    uid = next(ln.split()[1:] for ln in status.splitlines() if ln.startswith("Uid:"))
    assert uid == [str(_ids(rt, A).base)] * 4
    assert os.readlink(f"/proc/{pid}/ns/user") != os.readlink("/proc/self/ns/user")
    code, out = sh(rt, A, "id -u; grep -E '^(CapEff|CapBnd)' /proc/self/status")
    assert code == 0, out
    lines = out.split()
    assert lines[0] == "0"
    eff, bnd = int(lines[2], 16), int(lines[4], 16)
    assert eff & ALL_CAPS == ALL_CAPS and bnd & ALL_CAPS == ALL_CAPS, out


def test_each_ves_user_namespace_is_owned_by_its_own_ids(rt: Runtime) -> None:
    """The kernel charges per-user allowances (inotify instances, keys, namespaces)
    to a user namespace's owner: a VE's is its own range, not host root, so VEs do
    not share root's 128 inotify instances (systemd stops booting without them)."""
    NS_GET_OWNER_UID = 0xB704
    for ctid in (A, B):
        fd = os.open(f"/proc/{rt.init_pid(ctid)}/ns/user", os.O_RDONLY)
        try:
            owner = struct.unpack("I", fcntl.ioctl(fd, NS_GET_OWNER_UID, b"\0" * 4))[0]
        finally:
            os.close(fd)
        assert owner == _ids(rt, ctid).base


@pytest.mark.parametrize("ctid", [A, B], ids=["plain", "overlay"])
def test_files_on_disk_keep_the_caches_owners(rt: Runtime, ctid: int) -> None:
    code, out = sh(rt, ctid, "echo hi > /root/made-inside && chown 1000:1000 /root/made-inside"
                              " && ls -ln /etc/passwd /root/made-inside")
    assert code == 0, out
    for line in out.splitlines():       # inside: owners as the cache has them
        assert line.split()[2] in ("0", "1000"), out
    private = rt.paths.private(ctid)
    disk = private / ("upper/root/made-inside" if ctid == B else "root/made-inside")
    st = disk.stat()
    assert (st.st_uid, st.st_gid) == (1000, 1000)
    passwd = (layout.shared_of(rt.paths, ctid) if ctid == B else private) / "etc/passwd"
    assert passwd.stat().st_uid == 0
    # the host sees the VE's mounted root shifted into the VE's range
    mounted = rt.paths.ve_root(ctid) / "root/made-inside"
    assert mounted.stat().st_uid == _ids(rt, ctid).base + 1000


def test_the_ves_root_mounts_in_its_own_namespace_only(rt: Runtime) -> None:
    code, out = sh(rt, A, "mkdir -p /mnt/t && mount -t tmpfs none /mnt/t && "
                          "echo x > /mnt/t/f && cat /mnt/t/f")
    assert code == 0 and out.strip() == "x", out
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        assert "/mnt/t" not in f.read()
    # binding / onto itself inside shows the VE's root, never the host's
    code, out = sh(rt, A, "mkdir -p /mnt/r && mount --bind / /mnt/r && ls /mnt/r/etc/hostname"
                          " && cat /mnt/r/etc/hostname")
    assert code == 0 and "usa" in out, out


def test_no_power_over_the_host(rt: Runtime, tmp_path: Path) -> None:
    swappiness = Path("/proc/sys/vm/swappiness").read_text()
    code, out = sh(rt, A, "echo 17 > /proc/sys/vm/swappiness")
    assert code != 0, out
    assert Path("/proc/sys/vm/swappiness").read_text() == swappiness
    code, out = sh(rt, A, "insmod /bin/busybox")
    assert code != 0, out
    before = subprocess.run(["date", "+%Y"], capture_output=True, text=True).stdout
    sh(rt, A, "date -s '2001-01-01 00:00:00'")
    assert subprocess.run(["date", "+%Y"], capture_output=True, text=True).stdout == before
    code, out = sh(rt, A, "mknod /tmp/mem c 1 1")
    assert code != 0, out
    code, out = sh(rt, A, "ls /dev")
    assert "vda" not in out and "sda" not in out and "mem" not in out.split()
    # the host's /dev/null keeps its mode whatever the VE does to its own
    host_null = os.stat("/dev/null").st_mode
    code, out = sh(rt, A, "chmod 0600 /dev/null; stat -c %a /dev/null")
    assert out.strip() == "600", out
    assert os.stat("/dev/null").st_mode == host_null
    sh(rt, A, "chmod 0666 /dev/null")
    code, out = sh(rt, A, "ps -o pid,args")
    pids = [ln.split()[0] for ln in out.splitlines()[1:] if ln.strip()]
    assert "1" in pids and len(pids) < 10, out


def test_the_kernel_log_is_refused_not_an_endless_eof(rt: Runtime) -> None:
    """The VE cannot read the host's kernel log, and is told so: opening /proc/kmsg
    fails.  Masked with /dev/null instead, it read as an endless EOF, and rsyslog's
    imklog spun on it at 4 % of a CPU per VE."""
    code, out = sh(rt, A, "head -c1 /proc/kmsg; echo rc=$?")
    assert "rc=0" not in out, out
    assert "ermission denied" in out or "not permitted" in out, out
    code, out = sh(rt, A, "dmesg > /dev/null")
    assert code != 0 and "not permitted" in out, out


def test_a_console_mode_change_leaves_dev_null_writable(rt: Runtime) -> None:
    """A VE started without a console pty (through the API, not vzctl) has a console
    that discards output.  systemd chmods /dev/console 0620 at boot; when the console
    was /dev/null's own inode, that made /dev/null unwritable to every user but root
    (apt's _apt sandbox failed).  The console is a null device of its own."""
    code, out = sh(rt, A, "chmod 620 /dev/console && echo hi > /dev/console && "
                          "stat -c '%a %t:%T' /dev/null /dev/console")
    assert code == 0, out
    null, console = out.split()[-4:-2], out.split()[-2:]
    assert null == ["666", "1:3"], out
    assert console == ["620", "1:3"], out
    code, out = sh(rt, A, "su nobody -s /bin/sh -c 'echo x > /dev/null' 2>&1; echo rc=$?")
    assert "rc=0" in out, out


def test_a_stopped_ve_leaves_no_stage_mount(rt: Runtime) -> None:
    rt.stop(B)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            text = f.read()
        assert f"/{B}/root" not in text and f"/{B}/dev" not in text
        assert str(rt.paths.ve_root(B)) not in text
    finally:
        rt.start(B)
