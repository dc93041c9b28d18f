"""What a VE cannot do: see or reach the host and other VEs, change the host, or
take more than its share (NUMPROC, memory, CPUUNITS)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime_helpers import destroy_all, runtime_for, sh
from vzpkg.core.errors import VeError
from vzpkg.runtime import caps, layout
from vzpkg.runtime.ve import Runtime

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

A, B = 9101, 9102


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    r = runtime_for(tmp_path_factory.mktemp("iso"))
    # A in the old mode (host root, reduced capabilities), B in a user namespace
    r.create(A, "busybox-1", hostname="vea", ipadd=["198.18.91.1"], userns=False)
    r.create(B, "busybox-1", hostname="veb", ipadd=["198.18.91.2"], layout_name="overlay")
    r.start(A)
    r.start(B)
    yield r
    destroy_all(r)


def test_ps_shows_only_the_ve_with_init_as_pid_1(rt: Runtime) -> None:
    code, out = sh(rt, A, "ps -o pid,args")
    assert code == 0, out
    rows = [ln.split(None, 1) for ln in out.strip().splitlines()[1:]]
    pids = {int(r[0]): r[1] for r in rows}
    assert pids[1].startswith("/bin/sh /run/vzctl/init")
    assert len(pids) <= 5, out  # init, its sleep, the shell, ps
    assert not any("pytest" in a or "process_api" in a for a in pids.values())
    host_pids = {int(p) for p in os.listdir("/proc") if p.isdigit()}
    assert len(host_pids) > len(pids)


def test_host_and_other_ve_files_unreachable(rt: Runtime, tmp_path: os.PathLike[str]) -> None:
    secret = os.path.join(str(tmp_path), "host-secret")
    with open(secret, "w") as f:
        f.write("host only\n")
    assert sh(rt, B, "echo b-only > /root/b-secret")[0] == 0
    probes = [secret, f"{rt.paths.private(B)}/root/b-secret",
              f"{rt.paths.root}/shared", "/root/b-secret"]
    for p in probes:
        code, out = sh(rt, A, f"cat {p}")
        assert code != 0 and "only" not in out, (p, out)
    # no file anywhere in A's tree holds B's or the host's data
    code, out = sh(rt, A, "find / -xdev -type f -size -100k -exec grep -l "
                          "'b-only\\|host only' {} + 2>/dev/null")
    assert out.strip() == "", out
    # the magic links of A's own processes all lead to A's own root
    code, out = sh(rt, A, "ls /proc/1/root/; cat /proc/1/root/etc/hostname")
    assert "vea" in out


def test_mount_modules_clock_reboot_refused(rt: Runtime) -> None:
    """The old mode (VE_USERNS=no): the VE's root has a reduced capability set."""
    code, out = sh(rt, A, "mkdir -p /mnt/t && mount -t tmpfs none /mnt/t")
    assert code != 0 and "denied" in out.lower()
    code, out = sh(rt, A, "mount -o remount,rw /sys")
    assert code != 0
    before = time.time()
    code, out = sh(rt, A, "date -s '2001-01-01 00:00:00'")  # busybox date exits 0 anyway
    assert "not permitted" in out.lower()
    assert abs(time.time() - before) < 60
    code, out = sh(rt, A, "insmod /bin/busybox")
    assert code != 0
    code, out = sh(rt, A, "reboot -f")
    assert code != 0 and "not permitted" in out.lower()
    assert rt.state(A).running
    code, out = sh(rt, A, "mknod /tmp/mem c 1 1")
    assert code != 0
    # and the kernel agrees: none of these capabilities is in the VE's bounding set
    code, out = sh(rt, A, "grep CapBnd /proc/self/status")
    bnd = int(out.split()[1], 16)
    for name in ("SYS_ADMIN", "SYS_MODULE", "SYS_TIME", "SYS_BOOT", "SYS_RAWIO", "MKNOD"):
        assert not bnd & (1 << caps.CAP_NAMES[name]), name
    assert bnd == caps.ve_mask()


def test_sees_only_its_own_interfaces(rt: Runtime) -> None:
    _code, out = sh(rt, A, "ls /sys/class/net; ip -o addr")
    names = out.split("\n")[:2]
    assert names == ["eth0", "lo"], out
    assert "198.18.91.1" in out and "198.18.91.2" not in out
    assert "veth" not in out


def test_fork_bomb_stops_at_numproc(rt: Runtime) -> None:
    assert subprocess.run([_vzctl(), "set", str(A), "--numproc", "40:40"], env=_env(rt),
                          capture_output=True).returncode == 0
    try:
        # every process forks two more, then lingers; failed forks end the process
        bomb = "sh -c 'b() { b & b & sleep 20; }; b' </dev/null >/dev/null 2>&1 & echo started"
        code, out = sh(rt, A, bomb)
        assert code == 0 and "started" in out
        peak = 0
        for _ in range(20):
            time.sleep(0.05)
            peak = max(peak, len(rt.cgroups.procs(str(A))))
        assert 20 <= peak <= 40, peak
        # the host and the other VE carry on
        assert subprocess.run(["true"]).returncode == 0
        assert sh(rt, B, "echo fine")[1].strip() == "fine"
        counters = {c.resource: c for c in rt.cgroups.counters(str(A), rt.config(A))}
        assert counters["numproc"].failcnt > 0
        r = subprocess.run([_vzctl(), "ubc", str(A)], env=_env(rt), capture_output=True,
                           text=True)
        row = next(ln.split("|") for ln in r.stdout.splitlines() if "numproc" in ln)
        assert row[-2].strip() == "40" and int(row[-1]) > 0, r.stdout  # limit, failcnt
    finally:
        rt.stop(A, fast=True)
        rt.start(A)


def test_memory_hog_killed_inside_its_ve_only(rt: Runtime) -> None:
    r = subprocess.run([_vzctl(), "set", str(B), "--ram", "64M", "--swap", "0"],
                       env=_env(rt), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    code, out = sh(rt, B, "exec tail /dev/zero")  # tail keeps the endless line in memory
    assert code == 137, out  # SIGKILL from the OOM killer
    counters = {c.resource: c for c in rt.cgroups.counters(str(B), rt.config(B))}
    assert counters["physpages"].failcnt > 0
    assert counters["physpages"].maxheld <= 64 * 256 + 16  # pages of 4 KiB
    assert rt.state(B).running
    assert sh(rt, B, "echo still-here")[1].strip() == "still-here"
    assert sh(rt, A, "echo a-fine")[1].strip() == "a-fine"


def _cpu_ticks(rt: Runtime, ctid: int) -> int:
    total = 0
    for pid in rt.cgroups.procs(str(ctid)):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError):
            pass
    return total


def test_cpuunits_share_one_cpu_in_proportion(rt: Runtime) -> None:
    env = _env(rt)
    for ctid, units in ((A, "1000"), (B, "3000")):
        r = subprocess.run([_vzctl(), "set", str(ctid), "--cpuunits", units, "--cpumask", "0"],
                           env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    busy = "(while :; do :; done) >/dev/null 2>&1 & echo $!"
    try:
        for ctid in (A, B):
            assert sh(rt, ctid, busy)[0] == 0
        time.sleep(0.3)
        t0 = {c: _cpu_ticks(rt, c) for c in (A, B)}
        time.sleep(3)
        t1 = {c: _cpu_ticks(rt, c) for c in (A, B)}
        a, b = t1[A] - t0[A], t1[B] - t0[B]
        assert a > 0 and b > 0
        ratio = b / a
        assert 2.0 <= ratio <= 4.5, (a, b, ratio)
    finally:
        for ctid in (A, B):
            sh(rt, ctid, "kill -9 $(pidof sh | tr ' ' '\\n' | grep -v '^1$') 2>/dev/null; true")


def _vzctl() -> str:
    import sys
    return os.path.join(os.path.dirname(sys.executable), "vzctl")


def _env(rt: Runtime) -> dict[str, str]:
    return {**os.environ, "VZ_ROOT": str(rt.paths.root)}


def test_planted_symlinks_cannot_aim_mounts_at_the_host(rt: Runtime, tmp_path: Path) -> None:
    """A VE that replaces its /dev with a link to a host path cannot make start
    mount or create anything there: start refuses, the host path is untouched."""
    ctid = 9103
    target = tmp_path / "host-dir"
    target.mkdir()
    rt.create(ctid, "busybox-1")
    try:
        dev = rt.paths.private(ctid) / "dev"
        dev.rmdir()
        dev.symlink_to(target)
        with pytest.raises(VeError, match="symbolic link"):
            rt.start(ctid)
        assert list(target.iterdir()) == []
        assert not rt.state(ctid).running
        assert not layout.is_mounted(rt.paths.ve_root(ctid))
    finally:
        rt.destroy(ctid)


def test_plain_ve_cannot_pose_as_overlay(rt: Runtime, tmp_path: Path) -> None:
    """A plain VE that plants /lower, /upper and /work in its root (its private
    area) gets neither the host's files at start nor their removal at destroy."""
    ctid = 9104
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("host data\n")
    rt.create(ctid, "busybox-1")
    priv = rt.paths.private(ctid)
    (priv / "lower").symlink_to(victim)
    (priv / "upper").mkdir()
    (priv / "work").mkdir()
    rt.start(ctid)
    _code, out = sh(rt, ctid, "ls /; cat /keep")
    assert "host data" not in out and "lower" in out
    rt.destroy(ctid)
    assert (victim / "keep").read_text() == "host data\n"


def test_init_reaps_orphans(rt: Runtime) -> None:
    # ten orphans, re-parented to the VE's init, exit at once: none may stay a zombie
    assert sh(rt, A, "for i in 1 2 3 4 5 6 7 8 9 10; do (sleep 0.2 &); done")[0] == 0
    time.sleep(1)
    zombies = [p for p in rt.cgroups.procs(str(A))
               if Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"]
    assert zombies == []
    _code, out = sh(rt, A, "ps -o pid,stat,args")
    assert " Z " not in out, out
