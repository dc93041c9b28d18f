"""The parameter -> cgroup file mapping for v1 and v2, on directory-tree fixtures.

This machine's cgroup2 mount offers no resource controllers, so the v2 writes
are checked here against a tree shaped like a cgroup2 mount; the v2 lifecycle
(create, attach, kill, remove) runs for real in tests/integration.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cgroups_helpers import read, v1_tree, v2_tree
from vzpkg.core.errors import VeError
from vzpkg.runtime.cgroups import CgroupsV1, CgroupsV2, check_ctid, detect
from vzpkg.runtime.cgroups import v1 as v1mod
from vzpkg.runtime.cgroups import v2 as v2mod
from vzpkg.runtime.cgroups.mapping import (
    IoSchedulers,
    cpu_quota_us,
    cpu_shares,
    cpu_weight,
    host_has_swap,
    io_weight,
    v1_writes,
    v2_writes,
)
from vzpkg.runtime.cgroups.v1 import find_mounts
from vzpkg.runtime.config import VeConfig

FULL = VeConfig.parse('CPUUNITS="3000"\nCPULIMIT="150"\nCPUMASK="1-2"\nIOPRIO="6"\n'
                      'PHYSPAGES="65536:131072"\nSWAPPAGES="0:256M"\nNUMPROC="100:120"\n')


BFQ = IoSchedulers(bfq=True)
IOCOST = IoSchedulers(iocost=True)


def v1(tmp_path: Path) -> tuple[CgroupsV1, dict[str, Path]]:
    groups = v1_tree(tmp_path)
    cg = CgroupsV1({c: tmp_path / c for c in groups})
    cg.io = BFQ
    return cg, groups


def v2(root: Path, io: IoSchedulers = IOCOST) -> CgroupsV2:
    cg = CgroupsV2(root)
    cg.io = io
    return cg


def test_io_weight_scale() -> None:
    assert [io_weight(p) for p in range(8)] == [25, 35, 50, 71, 100, 141, 200, 283]


def _io_files(version: int, io: IoSchedulers, prio: int = 6) -> dict[str, str]:
    cfg = VeConfig.parse(f'IOPRIO="{prio}"\n')
    writes = v1_writes(cfg, io=io) if version == 1 else v2_writes(cfg, io=io)
    return {w.file: w.value for w in writes if w.param == "IOPRIO"}


def test_ioprio_goes_to_the_weight_file_of_the_hosts_scheduler() -> None:
    """BFQ reads io.bfq.weight (v2) or blkio.bfq.weight (v1); io.cost (v2 only) reads
    io.weight; with neither, nothing is written and set warns (IOPRIO is a hint)."""
    none, bfq, iocost = IoSchedulers(), IoSchedulers(bfq=True), IoSchedulers(iocost=True)
    both = IoSchedulers(bfq=True, iocost=True)
    assert _io_files(2, bfq) == {"io.bfq.weight": "200"}
    assert _io_files(2, iocost) == {"io.weight": "default 200"}
    assert _io_files(2, both) == {"io.bfq.weight": "200", "io.weight": "default 200"}
    assert _io_files(2, none) == {}
    assert _io_files(1, bfq) == _io_files(1, both) == {"blkio.bfq.weight": "200"}
    assert _io_files(1, iocost) == _io_files(1, none) == {}
    assert _io_files(2, both, prio=0) == {"io.bfq.weight": "25", "io.weight": "default 25"}
    for version, io in ((2, none), (1, none), (1, iocost)):
        assert "no disk uses the BFQ I/O scheduler" in io.unused_because(version)
    assert "io.cost" in none.unused_because(2)
    assert not bfq.unused_because(1) and not iocost.unused_because(2)
    assert not bfq.unused_because(2)


def test_io_schedulers_are_read_from_the_host(tmp_path: Path) -> None:
    block, cg2 = tmp_path / "block", tmp_path / "cgroup"
    for disk, sched in (("vda", "none [mq-deadline] kyber bfq\n"),
                        ("loop0", "[none] mq-deadline\n")):
        (block / disk / "queue").mkdir(parents=True)
        (block / disk / "queue/scheduler").write_text(sched)
    cg2.mkdir()
    assert IoSchedulers.of_host(cg2, block) == IoSchedulers()     # no io.cost.qos
    (cg2 / "io.cost.qos").write_text("253:0 enable=0 ctrl=auto rpct=0.00\n")
    assert IoSchedulers.of_host(cg2, block) == IoSchedulers()
    (cg2 / "io.cost.qos").write_text("253:0 enable=0 ctrl=auto\n8:0 enable=1 ctrl=user\n")
    assert IoSchedulers.of_host(cg2, block) == IoSchedulers(iocost=True)
    assert IoSchedulers.of_host(None, block) == IoSchedulers()      # v1: no io.cost
    (block / "loop0/queue/scheduler").write_text("none mq-deadline [bfq]\n")
    assert IoSchedulers.of_host(cg2, block) == IoSchedulers(bfq=True, iocost=True)


def test_v2_writes_the_bfq_weight_where_bfq_runs(tmp_path: Path) -> None:
    g = v2_tree(tmp_path)
    (g / "io.bfq.weight").write_text("default 100\n")
    v2(tmp_path, IoSchedulers(bfq=True)).apply("101", FULL)
    assert read(g, "io.bfq.weight") == "200"
    assert read(g, "io.weight") == "default 100"                  # io.cost is not on
    (g / "io.bfq.weight").unlink()            # a hint: a missing file is skipped
    v2(tmp_path, IoSchedulers(bfq=True)).apply("101", FULL)


def test_cpu_scaling() -> None:
    assert [cpu_weight(u) for u in (8, 1000, 3000, 500000)] == [1, 100, 300, 10000]
    assert [cpu_shares(u) for u in (8, 1000, 3000, 500000)] == [8, 1024, 3072, 262144]


@pytest.mark.parametrize(("conf", "quota"), [
    ("", None), ('CPULIMIT="50"', 50000), ('CPULIMIT="200"', 200000),
    ('CPUS="1"', 100000), ('CPUS="2"\nCPULIMIT="300"', 200000),
    ('CPUS="4"\nCPULIMIT="150"', 150000), ('CPULIMIT="0"\nCPUS="0"', None),
])
def test_cpu_quota_is_the_lower_cap(conf: str, quota: int | None) -> None:
    assert cpu_quota_us(VeConfig.parse(conf)) == quota


def test_v2_full_mapping(tmp_path: Path) -> None:
    g = v2_tree(tmp_path)
    v2(tmp_path).apply("101", FULL)
    assert read(g, "cpu.weight") == "300"
    assert read(g, "cpu.max") == "150000 100000"
    assert read(g, "cpuset.cpus") == "1-2"
    assert read(g, "memory.max") == str(512 << 20)
    assert read(g, "memory.high") == str(256 << 20)      # the barrier is the soft limit
    assert read(g, "memory.swap.max") == str(256 << 20)
    assert read(g, "pids.max") == "120"
    assert read(g, "io.weight") == "default 200"


def test_v2_unset_params_lift_the_limits(tmp_path: Path) -> None:
    g = v2_tree(tmp_path)
    cg = v2(tmp_path)
    cg.apply("101", FULL)
    cg.apply("101", VeConfig.parse('PHYSPAGES="0:1G"\n'))  # live change: most unset
    assert read(g, "cpu.weight") == "100"
    assert read(g, "cpu.max") == "max 100000"
    assert read(g, "memory.max") == str(1 << 30)
    assert read(g, "memory.high") == "max"                # barrier 0 = no soft limit
    assert read(g, "memory.swap.max") == "max"
    assert read(g, "pids.max") == "max"
    assert read(g, "cpuset.cpus") == ""
    assert read(g, "io.weight") == "default 100"


def test_v2_missing_controller(tmp_path: Path) -> None:
    g = v2_tree(tmp_path, controllers="cpu memory")
    cg = CgroupsV2(tmp_path)
    with pytest.raises(VeError) as ei:
        cg.apply("101", VeConfig.parse('NUMPROC="50"\n'))
    assert "NUMPROC cannot be enforced" in str(ei.value)
    assert "'pids' controller is not enabled" in str(ei.value)
    assert ei.value.hint and "+pids" in ei.value.hint
    cg.apply("101", VeConfig.parse('PHYSPAGES="0:64M"\n'))  # no pids limit: fine
    assert read(g, "memory.max") == str(64 << 20)
    assert not (g / "pids.max").exists()


def test_missing_swap_accounting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A swap limit the kernel cannot account is an error only where there is swap."""
    g = v2_tree(tmp_path, skip=("memory.swap.max",))
    cfg = VeConfig.parse('PHYSPAGES="0:64M"\nSWAPPAGES="0:1G"\n')
    monkeypatch.setattr(v2mod, "host_has_swap", lambda: True)
    with pytest.raises(VeError, match=r"SWAPPAGES cannot be enforced: .*memory.swap.max"):
        CgroupsV2(tmp_path).apply("101", cfg)
    monkeypatch.setattr(v2mod, "host_has_swap", lambda: False)
    CgroupsV2(tmp_path).apply("101", cfg)
    assert read(g, "memory.max") == str(64 << 20)
    (tmp_path / "v1").mkdir()
    groups = v1_tree(tmp_path / "v1")
    (groups["memory"] / "memory.memsw.limit_in_bytes").unlink()
    monkeypatch.setattr(v1mod, "host_has_swap", lambda: True)
    cg1 = CgroupsV1({c: tmp_path / "v1" / c for c in groups})
    with pytest.raises(VeError, match=r"SWAPPAGES cannot be enforced: .*memsw"):
        cg1.apply("101", cfg)
    assert read(groups["memory"], "memory.limit_in_bytes") == "9223372036854771712"  # as was
    cg1.apply("101", VeConfig.parse('PHYSPAGES="0:64M"\n'))  # no swap limit: fine


def test_host_has_swap(tmp_path: Path) -> None:
    f = tmp_path / "swaps"
    f.write_text("Filename\tType\tSize\tUsed\tPriority\n")
    assert host_has_swap(f) is False
    f.write_text("Filename\tType\tSize\tUsed\tPriority\n/swapfile file 1048572 0 -2\n")
    assert host_has_swap(f) is True


def test_v2_apply_needs_the_group(tmp_path: Path) -> None:
    v2_tree(tmp_path)
    with pytest.raises(VeError, match="VE 102: no cgroup"):
        CgroupsV2(tmp_path).apply("102", FULL)


def test_v1_full_mapping(tmp_path: Path) -> None:
    cg, g = v1(tmp_path)
    cg.apply("101", FULL)
    assert read(g["cpu"], "cpu.shares") == "3072"
    assert read(g["cpu"], "cpu.cfs_period_us") == "100000"
    assert read(g["cpu"], "cpu.cfs_quota_us") == "150000"
    assert read(g["cpuset"], "cpuset.cpus") == "1-2"
    assert read(g["memory"], "memory.limit_in_bytes") == str(512 << 20)
    assert read(g["memory"], "memory.soft_limit_in_bytes") == str(256 << 20)
    assert read(g["memory"], "memory.memsw.limit_in_bytes") == str(768 << 20)  # RAM+swap
    assert read(g["pids"], "pids.max") == "120"
    assert read(g["blkio"], "blkio.bfq.weight") == "200"


def test_v1_unset_params_lift_the_limits(tmp_path: Path) -> None:
    cg, g = v1(tmp_path)
    cg.apply("101", FULL)
    cg.apply("101", VeConfig())
    assert read(g["cpu"], "cpu.shares") == "1024"
    assert read(g["cpu"], "cpu.cfs_quota_us") == "-1"
    assert read(g["cpuset"], "cpuset.cpus") == "0-3"      # all of the host's CPUs
    assert read(g["memory"], "memory.limit_in_bytes") == "-1"
    assert read(g["memory"], "memory.memsw.limit_in_bytes") == "-1"
    assert read(g["pids"], "pids.max") == "max"
    assert read(g["blkio"], "blkio.bfq.weight") == "100"


def test_v1_memsw_is_opened_before_the_ram_limit_moves() -> None:
    files = [(w.file, w.value) for w in v1_writes(FULL)
             if w.controller == "memory" and ".tcp." not in w.file]
    assert files == [
        ("memory.memsw.limit_in_bytes", "-1"),
        ("memory.limit_in_bytes", str(512 << 20)),
        ("memory.soft_limit_in_bytes", str(256 << 20)),
        ("memory.memsw.limit_in_bytes", str(768 << 20)),
    ]


def test_v1_missing_controller(tmp_path: Path) -> None:
    groups = v1_tree(tmp_path, controllers=("cpu", "memory", "freezer"))
    cg = CgroupsV1({c: tmp_path / c for c in groups})
    with pytest.raises(VeError, match="NUMPROC cannot be enforced: the pids controller is "
                                      "not mounted") as ei:
        cg.apply("101", VeConfig.parse('NUMPROC="50"\n'))
    assert ei.value.hint and "pids" in ei.value.hint
    cg.apply("101", VeConfig.parse('CPUUNITS="500"\n'))
    assert read(groups["cpu"], "cpu.shares") == "512"


def test_cpumask_outside_the_host(tmp_path: Path) -> None:
    cg, _ = v1(tmp_path)
    with pytest.raises(VeError, match="CPUMASK 7 names CPUs the host does not have") as ei:
        cg.apply("101", VeConfig.parse('CPUMASK="7"\n'))
    assert ei.value.hint == "the host's CPUs are 0-3"


def test_v2_counters(tmp_path: Path) -> None:
    g = v2_tree(tmp_path)
    for name, text in {"memory.current": "8192000", "memory.peak": "16384000",
                       "memory.max": str(64 << 20), "memory.high": "max",
                       "memory.events": "low 0\nhigh 0\nmax 7\noom 1\noom_kill 2\n",
                       "memory.stat": "anon 1\nkernel 40960\n",
                       "pids.current": "5", "pids.peak": "20", "pids.max": "20",
                       "pids.events": "max 3\n"}.items():
        (g / name).write_text(text)
    got = {b.resource: b for b in CgroupsV2(tmp_path).counters(
        "101", VeConfig.parse('NUMPROC="15:20"\nPHYSPAGES="0:64M"\n'))}
    assert (got["physpages"].held, got["physpages"].maxheld) == (2000, 4000)
    assert (got["physpages"].barrier, got["physpages"].limit) == (0, 16384)
    assert got["physpages"].failcnt == 7
    assert got["oomguarpages"].failcnt == 2
    assert got["kmemsize"].held == 40960
    n = got["numproc"]
    assert (n.held, n.maxheld, n.barrier, n.limit, n.failcnt) == (5, 20, 15, 20, 3)
    assert got["swappages"].unlimited


def test_v1_counters(tmp_path: Path) -> None:
    cg, g = v1(tmp_path)
    m = g["memory"]
    for name, text in {"memory.usage_in_bytes": "4096000", "memory.max_usage_in_bytes":
                       "8192000", "memory.limit_in_bytes": str(32 << 20),
                       "memory.memsw.usage_in_bytes": "8192000",
                       "memory.memsw.max_usage_in_bytes": "8192000",
                       "memory.memsw.limit_in_bytes": str(48 << 20),
                       "memory.failcnt": "12", "memory.oom_control":
                       "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n"}.items():
        (m / name).write_text(text)
    (g["pids"] / "pids.max").write_text("0")
    got = {b.resource: b for b in cg.counters("101")}
    p = got["physpages"]
    assert (p.held, p.maxheld, p.limit, p.failcnt) == (1000, 2000, 8192, 12)
    assert p.unlimited is False and p.barrier > p.limit  # no soft limit
    s = got["swappages"]
    assert (s.held, s.maxheld, s.limit) == (1000, 0, 4096)
    assert got["oomguarpages"].failcnt == 1
    assert (got["numproc"].limit, got["numproc"].barrier) == (0, 0)  # 0 is a real limit


def test_detect(tmp_path: Path) -> None:
    v2_tree(tmp_path / "pure")
    assert isinstance(detect(tmp_path / "pure"), CgroupsV2)
    hybrid = tmp_path / "hybrid"
    v1_tree(hybrid)
    assert isinstance(detect(hybrid), CgroupsV1)            # unified absent
    (hybrid / "unified").mkdir()
    (hybrid / "unified" / "cgroup.controllers").write_text("hugetlb")
    cg = detect(hybrid)                                     # this machine's shape
    assert isinstance(cg, CgroupsV1) and "pids" in cg.mounts
    (hybrid / "unified" / "cgroup.controllers").write_text("cpu memory pids")
    cg2 = detect(hybrid)
    assert isinstance(cg2, CgroupsV2) and cg2.root == hybrid / "unified"
    (tmp_path / "none").mkdir()
    with pytest.raises(VeError, match="no usable cgroup hierarchy") as ei:
        detect(tmp_path / "none")
    assert ei.value.hint


def test_find_mounts_reads_mountinfo(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755\n"
        "31 30 0:27 / /sys/fs/cgroup/cpu,cpuacct rw shared:9 - cgroup cgroup rw,cpu,cpuacct\n"
        "32 30 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "33 30 0:29 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n"
        "34 30 0:30 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
        "35 20 0:31 / /elsewhere/pids rw - cgroup cgroup rw,pids\n")
    m = find_mounts(Path("/sys/fs/cgroup"), info)
    assert m == {"cpu": Path("/sys/fs/cgroup/cpu,cpuacct"),
                 "cpuacct": Path("/sys/fs/cgroup/cpu,cpuacct"),
                 "memory": Path("/sys/fs/cgroup/memory")}
    cg = CgroupsV1(m)
    assert len({cg.group(c, "5") for c in ("cpu", "cpuacct")}) == 1


@pytest.mark.parametrize("bad", ["", "../1", "a/b", ".", "-1", "x" * 80])
def test_check_ctid(bad: str) -> None:
    with pytest.raises(VeError, match="is not a valid CTID"):
        check_ctid(bad)


def test_v1_create_gives_cpuset_groups_cpus(tmp_path: Path) -> None:
    """A new v1 cpuset group has no CPUs until given its parent's (else attach fails)."""
    groups = v1_tree(tmp_path, "101", controllers=("cpuset", "pids"))
    (tmp_path / "cpuset/vzpkg/cpuset.cpus").write_text("")   # left empty by a crash
    cg = CgroupsV1({c: tmp_path / c for c in groups})
    cg.create("102")
    assert read(tmp_path / "cpuset/vzpkg", "cpuset.cpus") == "0-3"
    assert read(tmp_path / "cpuset/vzpkg/102", "cpuset.cpus") == "0-3"
    assert read(tmp_path / "cpuset/vzpkg/102", "cpuset.mems") == "0"
    assert (tmp_path / "pids/vzpkg/102").is_dir() and cg.exists("102")
    assert cg.list_ctids() == ["101", "102"]
