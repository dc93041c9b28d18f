"""IOLIMIT and IOPSLIMIT: a VE's disk bandwidth and I/O operations per second.

Both are limits of the block layer's throttle, per disk: the disk that holds the
VE's private area (its file system's device; a partition's whole disk).

=============  =========================================  ================================
parameter      cgroup v2                                  cgroup v1
=============  =========================================  ================================
IOLIMIT        io.max ``MAJ:MIN rbps=N wbps=N``           blkio.throttle.{read,write}_bps_device
IOPSLIMIT      io.max ``MAJ:MIN riops=N wiops=N``         blkio.throttle.{read,write}_iops_device
=============  =========================================  ================================

0 is no limit.  Where the host cannot throttle (the private area is on a file
system without a block device, such as tmpfs, or the io/blkio controller is not
there), ``vzctl set`` warns and the VE runs without the limit: never a failed set or
start.  On cgroup v1 the throttle sees direct I/O and reads; buffered writes reach the
disk from the kernel's writeback, which v1 does not charge to the VE.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from vzpkg.runtime.cgroups.base import LEAF, Cgroups
from vzpkg.runtime.cgroups.v1 import CgroupsV1
from vzpkg.runtime.cgroups.v2 import CgroupsV2
from vzpkg.runtime.config import VeConfig

SYS_DEV_BLOCK = Path("/sys/dev/block")
KEYS = ("IOLIMIT", "IOPSLIMIT")


def disk_of(path: Path, sys_block: Path = SYS_DEV_BLOCK) -> str | None:
    """``MAJ:MIN`` of the whole disk under the file system of *path*; None when that
    file system has no block device (tmpfs, overlayfs, ...)."""
    try:
        dev = os.stat(path).st_dev
    except OSError:
        return None
    node = f"{os.major(dev)}:{os.minor(dev)}"
    entry = sys_block / node
    if os.major(dev) == 0 or not entry.exists():
        return None
    if (entry / "partition").exists():           # a partition: its disk
        with contextlib.suppress(OSError):
            return (entry.resolve().parent / "dev").read_text().strip() or None
        return None
    return node


def limits(cfg: VeConfig) -> tuple[int, int]:
    """(bytes per second, operations per second); 0 = none."""
    return cfg.get_int("IOLIMIT") or 0, cfg.get_int("IOPSLIMIT") or 0


def v2_line(disk: str, bps: int, iops: int) -> str:
    def v(n: int) -> str:
        return str(n) if n > 0 else "max"
    return f"{disk} rbps={v(bps)} wbps={v(bps)} riops={v(iops)} wiops={v(iops)}"


def v1_lines(disk: str, bps: int, iops: int) -> list[tuple[str, str]]:
    """(file, value) pairs; a 0 removes the disk's rule."""
    return [(f"blkio.throttle.{d}_{kind}_device", f"{disk} {n}")
            for kind, n in (("bps", bps), ("iops", iops)) for d in ("read", "write")]


def _group(cg: Cgroups, ctid: str) -> tuple[Path | None, str]:
    """The VE's group that holds the throttle, and the controller's name."""
    if isinstance(cg, CgroupsV1):
        return cg.group("blkio", ctid), "blkio"
    if isinstance(cg, CgroupsV2):
        return cg.group(ctid), "io"
    return None, "io"


def unusable(cg: Cgroups, private: Path, ctid: str | None = None) -> str:
    """Why this host cannot throttle a VE whose private area is *private* ("" when
    it can); with *ctid*, also checks the running VE's group."""
    if disk_of(private) is None:
        return f"{private} is on a file system without a block device"
    if isinstance(cg, CgroupsV1) and "blkio" not in cg.mounts:
        return "the cgroup v1 blkio controller is not mounted"
    if isinstance(cg, CgroupsV2) and "io" not in cg.available():
        return "the cgroup v2 io controller is not offered by the host"
    if ctid is None:
        return ""
    group, controller = _group(cg, ctid)
    if group is None or not group.is_dir():
        return f"the {controller} controller is not there for the VE"
    if cg.version == 2 and not (group / "io.max").exists():
        return "the cgroup v2 io controller is not enabled for the VE (no io.max)"
    if cg.version == 1 and not (group / "blkio.throttle.read_bps_device").exists():
        return "the kernel has no blkio throttle (blkio.throttle.*)"
    return ""


def warning(why: str) -> str:
    return (f"warning: IOLIMIT/IOPSLIMIT has no effect on this host: {why}; the VE runs "
            "without it")


def apply(cg: Cgroups, ctid: str, cfg: VeConfig, private: Path) -> str:
    """Put the VE's IOLIMIT and IOPSLIMIT on its group; a warning when this host
    cannot (see the module's note), else "" (also when neither is set)."""
    bps, iops = limits(cfg)
    why = unusable(cg, private, ctid)
    if why:
        return warning(why) if bps or iops else ""
    disk = disk_of(private)
    group, _ = _group(cg, ctid)
    assert disk is not None and group is not None
    try:
        if cg.version == 2:
            _write(group / "io.max", v2_line(disk, bps, iops))
        else:   # v1's throttle is not hierarchical: the leaf with the tasks too
            for g in (group, group / LEAF):
                for name, value in v1_lines(disk, bps, iops):
                    if (g / name).exists():
                        _write(g / name, value)
    except OSError as exc:
        return warning(f"the kernel refused the throttle for disk {disk} ({exc.strerror})") \
            if bps or iops else ""
    return ""


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)
