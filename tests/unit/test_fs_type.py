"""fs_type: which file system holds a path (the deepest mount wins)."""

from __future__ import annotations

from pathlib import Path

from vzpkg.build.buildve import fs_type


def test_the_deepest_mount_holding_the_path_decides() -> None:
    assert fs_type(Path("/proc/sys/kernel")) == "proc"
    assert fs_type(Path("/sys/kernel")) == "sysfs"
    # /sys/fs/cgroup is a mount of its own below /sys (cgroup2 or a tmpfs of v1 controllers)
    assert fs_type(Path("/sys/fs/cgroup")) not in ("sysfs", "")


def test_a_path_that_does_not_exist_yet_belongs_to_its_parent_mount() -> None:
    assert fs_type(Path("/proc/no/such/dir")) == "proc"
