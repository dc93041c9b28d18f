"""A VE has a cgroup of its own in every hierarchy, and may open only the standard
device nodes (the devices cgroup denies the rest, on v1 and as a BPF program on v2).

Real VEs, real cgroups: on this host the v1 controllers, the ``name=systemd``
hierarchy and the controller-less cgroup2 mount at /sys/fs/cgroup/unified.
"""

from __future__ import annotations

import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime_helpers import destroy_all, runtime_for, sh
from vzpkg.runtime.cgroups import CgroupsV2
from vzpkg.runtime.ve import Runtime

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

CTID = 9361
UNIFIED = Path("/sys/fs/cgroup/unified")
ALLOWED = {"c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm", "c 5:0 rwm",
           "c 5:1 rw", "c 5:2 rw", "c 136:* rw"}


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    r = runtime_for(tmp_path_factory.mktemp("cgconf"))
    r.create(CTID, "busybox-1", hostname="cgconf")
    r.start(CTID)
    yield r
    destroy_all(r)


def _cgroup_lines(pid: int) -> list[tuple[str, str]]:
    """(hierarchy, path) of every line of /proc/PID/cgroup, as the host sees it."""
    out = []
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        out.append((names, path))
    return out


# Nodes a VE must not open that open without any capability (the host's own devices
# cgroup on this machine may refuse its disk, so not that): a loop device and KVM.
PLANTED = {"loopdev": (stat.S_IFBLK, 7, 0), "kvm": (stat.S_IFCHR, 10, 232)}


def test_every_hierarchy_puts_the_ve_in_its_own_cgroup(rt: Runtime) -> None:
    want = f"/{rt.paths.cgroup_prefix}/{CTID}/ve"
    pid = rt.init_pid(CTID)
    lines = _cgroup_lines(pid)
    names = {n for n, _ in lines}
    if Path("/sys/fs/cgroup/systemd/cgroup.procs").exists():
        assert "name=systemd" in names
    if (UNIFIED / "cgroup.procs").exists() or Path("/sys/fs/cgroup/cgroup.procs").exists():
        assert "" in names                                  # the 0:: line
    assert all(p == want for _, p in lines), lines
    # a command vzctl exec starts lands in the same leaf in every hierarchy
    code, out = sh(rt, CTID, "cat /proc/self/cgroup; sleep 0")
    assert code == 0 and all(ln.endswith(":/") for ln in out.split()), out


def test_devices_list_shows_only_the_standard_nodes(rt: Runtime) -> None:
    mount = rt.cgroups.mounts.get("devices") if hasattr(rt.cgroups, "mounts") else None
    if mount is None:
        pytest.skip("no cgroup v1 devices controller on this host")
    pid = rt.init_pid(CTID)
    path = dict(_cgroup_lines(pid))["devices"]
    listed = set((mount / path.lstrip("/") / "devices.list").read_text().split("\n")) - {""}
    assert listed == ALLOWED


def test_a_node_outside_the_list_cannot_be_opened(rt: Runtime, tmp_path: Path) -> None:
    """A block device and /dev/kvm, planted in the VE's /dev, open nothing (that
    /dev is nodev, so the mount refuses first: EACCES); the devices cgroup refuses
    them too (EPERM), shown by a process in the VE's cgroup opening the same nodes
    on a host file system that allows devices; the standard nodes still work."""
    pid = rt.init_pid(CTID)
    dev = Path(f"/proc/{pid}/root/dev")
    for name, (kind, major, minor) in PLANTED.items():
        if not os.path.exists(f"/dev/{name.replace('loopdev', 'loop0')}"):
            pytest.skip(f"the host has no {name} device")
        os.mknod(dev / name, 0o666 | kind, os.makedev(major, minor))
    try:
        for name in PLANTED:
            code, out = sh(rt, CTID, f"exec 3</dev/{name} && echo opened")
            assert code != 0 and "opened" not in out, (name, out)
            assert "Permission denied" in out or "not permitted" in out, (name, out)
        # the cgroup layer alone: the VE's cgroup, host mounts
        for name, (kind, major, minor) in PLANTED.items():
            os.mknod(tmp_path / name, 0o600 | kind, os.makedev(major, minor))
        probe = ("import os,sys\n"
                 "for p in sys.argv[1:]:\n"
                 "    try:\n"
                 "        os.close(os.open(p, os.O_RDONLY)); print(p, 'ok')\n"
                 "    except OSError as e: print(p, e.strerror)\n")
        nodes = [str(tmp_path / n) for n in PLANTED]
        r = subprocess.run(["python3", "-c", probe, *nodes, "/dev/null"],
                           preexec_fn=lambda: rt.cgroups.attach(str(CTID), os.getpid()),
                           capture_output=True, text=True, timeout=30)
        assert r.stdout.splitlines() == [*(f"{n} Operation not permitted" for n in nodes),
                                         "/dev/null ok"], r
        code, out = sh(rt, CTID, "echo x > /dev/null && head -c 4 /dev/urandom | wc -c")
        assert (code, out.strip()) == (0, "4"), out
        # /dev/tty is allowed: without a controlling terminal it is ENXIO, not EPERM
        code, out = sh(rt, CTID, ": < /dev/tty")
        assert "No such device or address" in out, out
    finally:
        for name in PLANTED:
            (dev / name).unlink(missing_ok=True)


@pytest.mark.skipif(not (UNIFIED / "cgroup.procs").exists(),
                    reason="no cgroup2 mount at /sys/fs/cgroup/unified")
def test_v2_device_program_denies_a_block_device() -> None:
    """cgroup v2 has no devices files: the BPF program attached at create is the policy
    (runs here on the controller-less unified mount, as on a pure cgroup2 host)."""
    from vzpkg.runtime.cgroups import devices
    v2 = CgroupsV2(UNIFIED, prefix="vzpkg-devtest")
    ctid = f"d{os.getpid()}"
    v2.create(ctid)
    try:
        node = f"/tmp/vzpkg-devtest-{os.getpid()}"
        os.mknod(node, 0o600 | stat.S_IFBLK, os.makedev(7, 0))
        try:
            probe = ("import os,sys\n"
                     "for p in sys.argv[1:]:\n"
                     "    try:\n"
                     "        os.close(os.open(p, os.O_RDONLY)); print(p, 'ok')\n"
                     "    except OSError as e: print(p, e.strerror)\n")
            r = subprocess.run(["python3", "-c", probe, node, "/dev/null", "/dev/urandom"],
                               preexec_fn=lambda: v2.attach(ctid, os.getpid()),
                               capture_output=True, text=True, timeout=30)
        finally:
            os.unlink(node)
        assert r.stdout.splitlines() == [f"{node} Operation not permitted",
                                         "/dev/null ok", "/dev/urandom ok"], r
        # the leaf holds the process; the program sits on the group above it
        assert (UNIFIED / "vzpkg-devtest" / ctid / "ve" / "cgroup.procs").exists()
        assert devices.is_cgroup2(UNIFIED / "vzpkg-devtest" / ctid)
    finally:
        deadline = time.monotonic() + 5
        while v2.procs(ctid) and time.monotonic() < deadline:
            time.sleep(0.01)
        v2.remove(ctid)
        (UNIFIED / "vzpkg-devtest").rmdir()


def test_cpumask_moves_live_while_the_leaf_has_tasks() -> None:
    """v1 wants a child's CPUs within its parent's at every step: moving a running VE
    from CPU 0 to CPU 1 and back to all CPUs works with its processes in the leaf."""
    from vzpkg.runtime.cgroups import detect
    from vzpkg.runtime.config import VeConfig
    cg = detect(prefix="vzpkg-cputest")
    if os.cpu_count() is None or (os.cpu_count() or 1) < 2:
        pytest.skip("needs two CPUs")
    ctid = f"c{os.getpid()}"
    cg.create(ctid)
    p = subprocess.Popen(["sleep", "60"], preexec_fn=lambda: cg.attach(ctid, os.getpid()))
    try:
        for mask, want in (("0", {0}), ("1", {1}), ("0-1", {0, 1})):
            cg.apply(ctid, VeConfig.parse(f'CPUMASK="{mask}"\n'))
            assert os.sched_getaffinity(p.pid) == want, mask
    finally:
        cg.kill_all(ctid)
        p.wait(5)
        cg.remove(ctid)
        for top in {*getattr(cg, "mounts", {}).values(), *cg.extra,
                    *([cg.root] if isinstance(cg, CgroupsV2) else [])}:
            if (top / "vzpkg-cputest").is_dir():
                (top / "vzpkg-cputest").rmdir()
