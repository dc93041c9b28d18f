"""Directory trees shaped like cgroup v1 / v2 mounts, for unit tests without root.

The kernel populates a real group's files; here the tests create them, then
check what the cgroup code wrote into them.
"""

from __future__ import annotations

from pathlib import Path

V2_FILES = {
    "cgroup.procs": "", "cgroup.events": "populated 0\nfrozen 0\n",
    "cpu.weight": "100", "cpu.max": "max 100000", "cpuset.cpus": "",
    "memory.max": "max", "memory.high": "max", "memory.swap.max": "max",
    "memory.current": "0", "memory.peak": "0", "memory.swap.current": "0",
    "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
    "memory.stat": "anon 0\nkernel 0\n", "pids.max": "max", "pids.current": "0",
    "pids.peak": "0", "pids.events": "max 0\n", "io.weight": "default 100",
}
V1_FILES = {
    "cpu": {"cpu.shares": "1024", "cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "-1"},
    "cpuacct": {"cpuacct.usage": "0"},
    "cpuset": {"cpuset.cpus": "", "cpuset.mems": ""},
    "memory": {"memory.limit_in_bytes": "9223372036854771712",
               "memory.soft_limit_in_bytes": "9223372036854771712",
               "memory.memsw.limit_in_bytes": "9223372036854771712",
               "memory.usage_in_bytes": "0", "memory.max_usage_in_bytes": "0",
               "memory.memsw.usage_in_bytes": "0", "memory.memsw.max_usage_in_bytes": "0",
               "memory.failcnt": "0", "memory.memsw.failcnt": "0",
               "memory.kmem.usage_in_bytes": "0", "memory.kmem.max_usage_in_bytes": "0",
               "memory.kmem.failcnt": "0",
               "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n"},
    "pids": {"pids.max": "max", "pids.current": "0", "pids.peak": "0",
             "pids.events": "max 0\n"},
    "freezer": {"freezer.state": "THAWED"},
    "blkio": {"blkio.bfq.weight": "100"},
}


def fill(d: Path, files: dict[str, str]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name).write_text(text)
    return d


def v2_tree(root: Path, ctid: str = "101", *,
            controllers: str = "cpu cpuset memory pids io",
            skip: tuple[str, ...] = (), prefix: str = "vzpkg") -> Path:
    """A cgroup2 root with the VE's group; returns the group directory."""
    fill(root, {"cgroup.controllers": controllers, "cgroup.subtree_control": "",
                "cgroup.procs": "", "cpuset.cpus.effective": "0-3"})
    fill(root / prefix, {"cgroup.controllers": controllers,
                         "cgroup.subtree_control": ""})
    files = {k: v for k, v in V2_FILES.items()
             if k.split(".")[0] in [*controllers.split(), "cgroup"] and k not in skip}
    return fill(root / prefix / ctid, {"cgroup.controllers": controllers, **files})


def v1_tree(root: Path, ctid: str = "101",
            controllers: tuple[str, ...] = tuple(V1_FILES)) -> dict[str, Path]:
    """v1 controller dirs root/<ctrl> with the VE's group in each; returns the groups."""
    out = {}
    for c in controllers:
        common = {"cgroup.procs": "", "tasks": ""}
        top = {**common, **({"cpuset.cpus": "0-3", "cpuset.mems": "0",
                             "cpuset.effective_cpus": "0-3"} if c == "cpuset" else {})}
        fill(root / c, top)
        fill(root / c / "vzpkg", top)
        out[c] = fill(root / c / "vzpkg" / ctid, {**common, **V1_FILES[c]})
    return out


def read(d: Path, name: str) -> str:
    return (d / name).read_text().strip()
