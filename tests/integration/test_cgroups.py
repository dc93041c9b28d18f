"""Real cgroups: limits enforced on real processes, counters seen by vzubc.

Runs against whatever :func:`detect` finds (cgroup v1 controllers on this
machine, the unified hierarchy on a pure cgroup2 host).  The v2 lifecycle also
runs on this machine's controller-less ``/sys/fs/cgroup/unified`` mount.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vzpkg.cli import vzubc
from vzpkg.core.errors import VeError
from vzpkg.runtime.cgroups import Cgroups, CgroupsV2, detect
from vzpkg.runtime.config import VeConfig, ve_conf_path
from vzpkg.runtime.params import UNLIMITED
from vzpkg.runtime.paths import VzPaths
from vzpkg.runtime.ubc import Beancounter

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for cgroups")]
_N = itertools.count()
UNIFIED = Path("/sys/fs/cgroup/unified")


def _new_ctid() -> str:
    return f"rt{os.getpid()}x{next(_N)}"


def _cleanup(cg: Cgroups, ctid: str) -> None:
    if cg.exists(ctid):
        cg.kill_all(ctid)
        cg.remove(ctid)


@pytest.fixture
def cg() -> Cgroups:
    return detect()


@pytest.fixture
def ctid(cg: Cgroups) -> Iterator[str]:
    c = _new_ctid()
    cg.create(c)
    yield c
    _cleanup(cg, c)


def spawn(cg: Cgroups, ctid: str, argv: list[str], *, stdout: int | None = None,
          stderr: int | None = None) -> subprocess.Popen[str]:
    """Start *argv* inside the VE's group (joined between fork and exec)."""
    return subprocess.Popen(argv, preexec_fn=lambda: cg.attach(ctid, os.getpid()),
                            text=True, stdout=stdout, stderr=stderr)


def counters(cg: Cgroups, ctid: str, cfg: VeConfig | None = None) -> dict[str, Beancounter]:
    return {b.resource: b for b in cg.counters(ctid, cfg)}


FORK_BOMB = """
import os, sys, time
ok = fail = 0
for _ in range(60):
    try:
        pid = os.fork()
    except OSError:
        fail += 1
        continue
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    ok += 1
print(ok, fail, flush=True)
time.sleep(60)
"""


def test_fork_bomb_stops_at_numproc(cg: Cgroups, ctid: str) -> None:
    cfg = VeConfig.parse('NUMPROC="12:16"\n')
    cg.apply(ctid, cfg)
    p = spawn(cg, ctid, [sys.executable, "-c", FORK_BOMB], stdout=subprocess.PIPE)
    assert p.stdout is not None
    ok, fail = map(int, p.stdout.readline().split())
    assert ok == 15 and fail == 45          # 16 tasks: the parent and 15 children
    assert len(cg.procs(ctid)) == 16
    n = counters(cg, ctid, cfg)["numproc"]
    assert (n.held, n.maxheld, n.barrier, n.limit) == (16, 16, 12, 16)
    assert n.failcnt >= 45
    cg.kill_all(ctid)
    assert p.wait(5) == -9
    assert cg.procs(ctid) == []


HOG = """
import sys
chunks = []
while True:
    chunks.append(bytearray(4 << 20))
    if len(chunks) == 1:
        print("started", flush=True)
"""


def test_memory_hog_is_killed_at_the_limit(cg: Cgroups, ctid: str) -> None:
    cfg = VeConfig.parse('PHYSPAGES="0:48M"\nSWAPPAGES="0:0"\n')
    cg.apply(ctid, cfg)
    bystander = spawn(cg, ctid, ["sleep", "60"])
    p = spawn(cg, ctid, [sys.executable, "-c", HOG], stdout=subprocess.PIPE)
    assert p.wait(30) == -9                 # the OOM killer ended the hog ...
    assert bystander.poll() is None         # ... and only the hog
    c = counters(cg, ctid, cfg)
    phys = c["physpages"]
    assert phys.limit == (48 << 20) // 4096
    assert phys.maxheld <= phys.limit
    assert phys.maxheld > phys.limit * 0.8
    assert phys.failcnt > 0
    assert c["oomguarpages"].failcnt >= 1
    cg.kill_all(ctid)
    assert bystander.wait(5) == -9


def test_live_apply_changes_a_running_group(cg: Cgroups, ctid: str) -> None:
    p = spawn(cg, ctid, ["sleep", "60"])
    cg.apply(ctid, VeConfig.parse('NUMPROC="5"\nPHYSPAGES="0:256M"\n'))
    c = counters(cg, ctid)
    assert c["numproc"].limit == 5 and c["physpages"].limit == 65536
    cg.apply(ctid, VeConfig.parse('PHYSPAGES="0:128M"\n'))           # lower, then lift
    c = counters(cg, ctid)
    assert c["numproc"].limit == UNLIMITED and c["physpages"].limit == 32768
    assert cg.procs(ctid) == [p.pid]
    cg.kill_all(ctid)
    p.wait(5)


BUSY = "import time\nt = time.monotonic()\nwhile time.monotonic() - t < 1.0: pass\n"


def test_cpulimit_caps_cpu_time(cg: Cgroups, ctid: str) -> None:
    cg.apply(ctid, VeConfig.parse('CPULIMIT="10"\n'))
    p = spawn(cg, ctid, [sys.executable, "-c", BUSY])
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    assert cpu < 0.5, f"a 10% cap let a 1 s busy loop use {cpu:.2f} s of CPU"


def test_kill_all_empties_a_forking_group(cg: Cgroups, ctid: str) -> None:
    cg.apply(ctid, VeConfig.parse('NUMPROC="64"\n'))
    p = spawn(cg, ctid, ["sh", "-c", "while :; do sleep 5 & done"],
              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while len(cg.procs(ctid)) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(cg.procs(ctid)) >= 20
    with pytest.raises(VeError, match=r"processes .* are still in it"):
        cg.remove(ctid)
    cg.kill_all(ctid)
    assert cg.procs(ctid) == []
    p.wait(5)
    cg.remove(ctid)
    assert not cg.exists(ctid)
    assert ctid not in cg.list_ctids()


@pytest.fixture
def root_cg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Cgroups, str]]:
    """A VE group of the VZ_ROOT *tmp_path* (whose VEs vzubc reads), and its CTID."""
    monkeypatch.setenv("VZ_ROOT", str(tmp_path))
    cg = detect(prefix=VzPaths(tmp_path).cgroup_prefix)
    c = _new_ctid()
    cg.create(c)
    yield cg, c
    _cleanup(cg, c)


def test_vzubc_shows_the_limit_a_ve_hit(root_cg: tuple[Cgroups, str], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    cg, ctid = root_cg
    cfg = VeConfig.parse('NUMPROC="4:6"\n')
    cfg.save(ve_conf_path(tmp_path, ctid))
    cg.apply(ctid, cfg)
    p = spawn(cg, ctid, [sys.executable, "-c", FORK_BOMB], stdout=subprocess.PIPE)
    assert p.stdout is not None
    assert p.stdout.readline().split() == ["5", "55"]
    assert vzubc.main(["--raw", ctid]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "numproc" in line).split()
    assert row[-6:] == ["numproc", "6", "6", "4", "6", "55"]
    assert f"{ctid}:" in out
    assert vzubc.main([ctid]) == 0          # the human view: held 6 is 150% of barrier 4
    human = next(ln for ln in capsys.readouterr().out.splitlines() if "numproc" in ln)
    assert human.split("|")[1].split() == ["6", "150", "100"] and human.endswith("55")
    assert vzubc.main(["-q", ctid]) == 0
    quiet = capsys.readouterr().out
    assert "numproc" in quiet and "kmemsize" not in quiet
    assert vzubc.main(["-j", ctid]) == 0
    data = json.loads(capsys.readouterr().out)
    n = next(b for b in data[ctid] if b["resource"] == "numproc")
    assert (n["held"], n["limit"], n["failcnt"]) == (6, 6, 55)
    cg.kill_all(ctid)
    p.wait(5)
    missing = _new_ctid()
    assert vzubc.main([ctid, missing]) == 1
    io = capsys.readouterr()
    assert f"VE {missing} does not exist" in io.err and "numproc" in io.out
    cg.kill_all(ctid)
    cg.remove(ctid)
    assert vzubc.main([ctid]) == 1
    assert f"VE {ctid} is not running" in capsys.readouterr().err


@pytest.mark.skipif(not (UNIFIED / "cgroup.procs").exists(),
                    reason="no cgroup2 mount at /sys/fs/cgroup/unified")
def test_v2_lifecycle_on_the_unified_mount() -> None:
    """Real cgroup2: create, attach, cgroup.kill, remove (no resource controllers here)."""
    v2 = CgroupsV2(UNIFIED)
    ctid = _new_ctid()
    v2.create(ctid)
    try:
        assert (UNIFIED / "vzpkg" / ctid / "cgroup.procs").exists()
        p = spawn(v2, ctid, ["sh", "-c", "sleep 60 & sleep 60 & wait"])
        deadline = time.monotonic() + 5
        while len(v2.procs(ctid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(v2.procs(ctid)) == 3 and p.pid in v2.procs(ctid)
        v2.apply(ctid, VeConfig())      # nothing limited: nothing needs a controller
        if "pids" not in v2.available():
            with pytest.raises(VeError, match="'pids' controller is not enabled"):
                v2.apply(ctid, VeConfig.parse('NUMPROC="10"\n'))
        v2.kill_all(ctid)
        assert v2.procs(ctid) == [] and p.wait(5) == -9
        v2.remove(ctid)
        assert not v2.exists(ctid)
    finally:
        _cleanup(v2, ctid)


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_cpumask_pins_and_cpuunits_share_one_cpu(cg: Cgroups, ctid: str) -> None:
    """Two busy VEs on CPU 0 with CPUUNITS 1000 and 3000 get about 1:3 of it."""
    other = _new_ctid()
    cg.create(other)
    try:
        cg.apply(ctid, VeConfig.parse('CPUUNITS="1000"\nCPUMASK="0"\n'))
        cg.apply(other, VeConfig.parse('CPUUNITS="3000"\nCPUMASK="0"\n'))
        spin = "print('go', flush=True)\nwhile True: pass\n"
        procs = [spawn(cg, c, [sys.executable, "-c", spin], stdout=subprocess.PIPE)
                 for c in (ctid, other)]
        for p in procs:
            assert p.stdout is not None and p.stdout.readline() == "go\n"
        assert all(os.sched_getaffinity(p.pid) == {0} for p in procs)
        t0 = [_cpu_ticks(p.pid) for p in procs]  # both are spinning from here on
        time.sleep(1.5)
        used = [_cpu_ticks(p.pid) - t for p, t in zip(procs, t0, strict=True)]
        for c in (ctid, other):
            cg.kill_all(c)
        for p in procs:
            p.wait(5)
        ratio = used[1] / max(used[0], 1)
        assert 2.0 < ratio < 4.5, f"CPU ticks {used[0]} vs {used[1]}"
    finally:
        _cleanup(cg, other)


@pytest.mark.skipif(not (UNIFIED / "cgroup.procs").exists(),
                    reason="no cgroup2 mount at /sys/fs/cgroup/unified")
def test_v2_create_enables_offered_controllers() -> None:
    """The one controller this host leaves to cgroup2 (hugetlb) reaches the VE's group."""
    offered = set((UNIFIED / "cgroup.controllers").read_text().split())
    if "hugetlb" not in offered:
        pytest.skip("no controller is offered on the unified mount")
    top = UNIFIED / "cgroup.subtree_control"
    before = set(top.read_text().split())
    v2 = CgroupsV2(UNIFIED)
    v2.wanted = ("hugetlb",)
    ctid = _new_ctid()
    try:
        v2.create(ctid)
        assert "hugetlb" in (UNIFIED / "vzpkg" / ctid / "cgroup.controllers").read_text()
        assert any(f.name.startswith("hugetlb.") for f in (UNIFIED / "vzpkg" / ctid).iterdir())
    finally:
        _cleanup(v2, ctid)
        vz = UNIFIED / "vzpkg"
        if not any(p.is_dir() for p in vz.iterdir()):
            (vz / "cgroup.subtree_control").write_text("-hugetlb")
        if "hugetlb" not in before:
            top.write_text("-hugetlb")
