"""A VE sees its own limits (issue 14, section 3): procps' free and uptime and coreutils'
nproc inside a VE show the VE's RAM, CPUs and uptime, through lxcfs; and the fair
scheduler holds under contention (section 4): CPUUNITS 1000:3000 splits one CPU 1:3,
CPULIMIT 10% holds.  Real VEs (CTIDs 9865-9866); CPU time is read from the VEs'
cgroups, with generous tolerances (the host is shared)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime_helpers import copy_host_tools, destroy_all, runtime_for, sh, vzctl_cli
from vzpkg.runtime import lxcfs
from vzpkg.runtime.cgroups.base import read_keyed
from vzpkg.runtime.ve import Runtime

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

A, B = 9865, 9866


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    assert lxcfs.find() is not None, \
        "lxcfs is not running: tools/install-system-deps (make setup) starts it"
    r = runtime_for(tmp_path_factory.mktemp("ownview"))
    for ctid in (A, B):
        r.create(ctid, "busybox-1")
        copy_host_tools(r.paths.private(ctid), ["free", "uptime", "nproc"])
    assert vzctl_cli(r, "set", str(A), "--ram", "256M", "--cpus", "1", "--save"
                     ).returncode == 0
    r.start(A)
    yield r
    destroy_all(r)


def out(rt: Runtime, ctid: int, command: str) -> str:
    code, text = sh(rt, ctid, command)
    assert code == 0, (command, text)
    return text


def test_free_nproc_and_uptime_tell_the_ves_truth(rt: Runtime) -> None:
    mem = next(x for x in out(rt, A, "/usr/local/bin/free -m").splitlines() if x.startswith("Mem:"))
    assert mem.split()[1] == "256", mem                  # the host has 24 GiB
    assert out(rt, A, "/usr/local/bin/nproc").strip() == "1"            # CPUS=1 (the host has 2+)
    assert out(rt, A, "grep -c ^processor /proc/cpuinfo").strip() == "1"
    assert out(rt, A, "cat /sys/devices/system/cpu/online").strip() in ("0", "1")
    up = float(out(rt, A, "cat /proc/uptime").split()[0])
    host_up = float(Path("/proc/uptime").read_text().split()[0])
    assert up < 600 < host_up or up < host_up / 2, (up, host_up)
    assert "up" in out(rt, A, "/usr/local/bin/uptime")
    assert out(rt, A, "cat /proc/swaps").startswith("Filename")
    # a live change shows at once
    assert vzctl_cli(rt, "set", str(A), "--ram", "128M").returncode == 0
    mem = next(x for x in out(rt, A, "/usr/local/bin/free -m").splitlines() if x.startswith("Mem:"))
    assert mem.split()[1] == "128", mem
    # the host's own /proc is untouched
    assert "MemTotal" in Path("/proc/meminfo").read_text()
    assert int(Path("/proc/meminfo").read_text().split()[1]) > 1 << 20


def _cpu_seconds(rt: Runtime, ctid: int) -> float:
    cg = rt.cgroups
    if cg.version == 1:
        g = cg.group("cpuacct", str(ctid))  # type: ignore[attr-defined]
        return int((g / "cpuacct.usage").read_text()) / 1e9
    g = cg.group(str(ctid))  # type: ignore[attr-defined]
    return read_keyed(g / "cpu.stat")["usage_usec"] / 1e6


def _spin(rt: Runtime, ctid: int, n: int = 2) -> list[str]:
    loop = "exec sh -c 'while :; do :; done' </dev/null >/dev/null 2>&1"
    return [out(rt, ctid, f"{loop} & echo $!").strip() for _ in range(n)]


def _used(rt: Runtime, ctids: tuple[int, ...], seconds: float) -> list[float]:
    before = [_cpu_seconds(rt, c) for c in ctids]
    time.sleep(seconds)
    return [_cpu_seconds(rt, c) - b for c, b in zip(ctids, before, strict=True)]


def test_cpuunits_split_one_cpu_1_to_3(rt: Runtime) -> None:
    for ctid, units in ((A, "1000"), (B, "3000")):
        assert vzctl_cli(rt, "set", str(ctid), "--cpuunits", units, "--cpumask", "0",
                         "--cpus", "0", "--save").returncode == 0
    rt.stop(A)
    rt.start(A)
    rt.start(B)
    pids = {A: _spin(rt, A), B: _spin(rt, B)}
    try:
        time.sleep(1)
        a, b = _used(rt, (A, B), 6)
        print(f"CPUUNITS 1000:3000 on one CPU: {a:.2f}s : {b:.2f}s = 1:{b / a:.2f}")
        assert a > 0.05 and b > 0.05, (a, b)
        assert 2.0 <= b / a <= 4.5, f"CPUUNITS 1000:3000 gave {a:.2f}s : {b:.2f}s"
    finally:
        for ctid, ps in pids.items():
            sh(rt, ctid, "kill " + " ".join(ps))


def test_cpulimit_10_percent_holds(rt: Runtime) -> None:
    assert vzctl_cli(rt, "set", str(A), "--cpulimit", "10", "--cpumask", "all"
                     ).returncode == 0
    pids = _spin(rt, A, 2)
    try:
        time.sleep(0.5)
        (used,) = _used(rt, (A,), 6)
        print(f"CPULIMIT 10%, two spinning tasks: {used / 6:.1%} of one CPU")
        assert used <= 6 * 0.10 * 1.3, f"CPULIMIT 10% used {used:.2f}s of 6s"
        assert used >= 6 * 0.10 * 0.3, f"CPULIMIT 10%: only {used:.2f}s of 6s ran"
    finally:
        sh(rt, A, "kill " + " ".join(pids))
        vzctl_cli(rt, "set", str(A), "--cpulimit", "0")


def test_the_old_mode_sees_its_limits_too(rt: Runtime) -> None:
    ctid = 9867
    r = vzctl_cli(rt, "create", str(ctid), "--ostemplate", "busybox-1", "--userns", "no")
    assert r.returncode == 0, r.stderr
    try:
        assert vzctl_cli(rt, "set", str(ctid), "--ram", "128M", "--save").returncode == 0
        rt.start(ctid)
        assert out(rt, ctid, "head -1 /proc/meminfo").split()[1] == str(128 << 10)
        assert "fuse.lxcfs" in out(rt, ctid, "grep meminfo /proc/self/mountinfo")
    finally:
        rt.destroy(ctid)
