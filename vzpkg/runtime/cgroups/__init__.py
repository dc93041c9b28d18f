"""VE cgroups, v2 (unified) or v1 (one hierarchy per controller).

:func:`detect` picks what the host offers: the unified hierarchy when the
resource controllers live there (a pure cgroup2 ``/sys/fs/cgroup``, or a hybrid
host whose ``unified`` mount has them), else the v1 controller mounts.  Every VE
gets ``<controller root>/vzpkg/<ctid>``; the OpenVZ parameters map onto it as
:mod:`vzpkg.runtime.cgroups.mapping` describes.
"""

from __future__ import annotations

from pathlib import Path

from vzpkg.core.errors import VeError
from vzpkg.runtime.cgroups.base import DEFAULT_PREFIX, Cgroups, check_ctid
from vzpkg.runtime.cgroups.mapping import Write, v1_writes, v2_writes
from vzpkg.runtime.cgroups.v1 import CgroupsV1, find_extra, find_mounts
from vzpkg.runtime.cgroups.v2 import CgroupsV2
from vzpkg.runtime.ubc import Beancounter

__all__ = ["DEFAULT_PREFIX", "Beancounter", "Cgroups", "CgroupsV1", "CgroupsV2", "Write",
           "check_ctid", "detect", "find_extra", "v1_writes", "v2_writes"]

_CORE = {"memory", "pids"}


def detect(root: Path = Path("/sys/fs/cgroup"), prefix: str = DEFAULT_PREFIX,
           mountinfo: Path = Path("/proc/self/mountinfo")) -> Cgroups:
    """The host's cgroups: v2 if the controllers are on the unified hierarchy, else v1.

    The hierarchies without controllers (``name=systemd``, a v1 host's cgroup2 mount)
    come along as extras, so the VE has a group of its own in every hierarchy."""
    root = Path(root)
    if (root / "cgroup.controllers").exists():
        return CgroupsV2(root, prefix)
    unified = root / "unified"
    offered = set(((unified / "cgroup.controllers").read_text()
                   if (unified / "cgroup.controllers").exists() else "").split())
    if offered >= _CORE:
        return CgroupsV2(unified, prefix, find_extra(root, mountinfo, skip=unified))
    mounts = find_mounts(root, mountinfo)
    if mounts:
        return CgroupsV1(mounts, prefix, find_extra(root, mountinfo))
    raise VeError(f"no usable cgroup hierarchy under {root}",
                  hint="mount cgroup2 there (mount -t cgroup2 none /sys/fs/cgroup) or the "
                       "v1 controllers (memory, pids, cpu, cpuset, freezer)")
