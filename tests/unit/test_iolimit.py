"""IOLIMIT and IOPSLIMIT: the disk, the throttle lines for v1 and v2, and the warning
where the host cannot throttle (runtime/iolimit.py)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from tests.cgroups_helpers import v1_tree, v2_tree
from vzpkg.core.errors import UsageError
from vzpkg.runtime import iolimit
from vzpkg.runtime.cgroups import CgroupsV1, CgroupsV2
from vzpkg.runtime.config import VeConfig
from vzpkg.runtime.params import add_set_options, options_to_values


def _set(*argv: str) -> dict[str, str]:
    p = argparse.ArgumentParser()
    add_set_options(p)
    return options_to_values(p.parse_args(list(argv)))


def test_values_as_openvz() -> None:
    assert _set("--iolimit", "10") == {"IOLIMIT": str(10 << 20)}     # bare: MB/s
    assert _set("--iolimit", "512K") == {"IOLIMIT": str(512 << 10)}
    assert _set("--iolimit", "0", "--iopslimit", "300") == {"IOLIMIT": "0",
                                                           "IOPSLIMIT": "300"}
    assert _set("--iolimit", "unlimited") == {"IOLIMIT": "0"}
    for bad in ("-1", "10Q", "9" * 30):
        with pytest.raises(UsageError, match="--iolimit"):
            _set("--iolimit", bad)
    with pytest.raises(UsageError, match="--iopslimit"):
        _set("--iopslimit", "-5")
    cfg = VeConfig.parse(f'IOLIMIT="{5 << 20}"\nIOPSLIMIT="100"\n')
    assert iolimit.limits(cfg) == (5 << 20, 100)


def test_lines() -> None:
    assert iolimit.v2_line("8:0", 1 << 20, 0) == \
        "8:0 rbps=1048576 wbps=1048576 riops=max wiops=max"
    assert iolimit.v1_lines("8:0", 0, 50) == [
        ("blkio.throttle.read_bps_device", "8:0 0"),
        ("blkio.throttle.write_bps_device", "8:0 0"),
        ("blkio.throttle.read_iops_device", "8:0 50"),
        ("blkio.throttle.write_iops_device", "8:0 50")]


def test_a_partition_is_throttled_on_its_disk(tmp_path: Path) -> None:
    dev = os.stat(tmp_path).st_dev
    node = f"{os.major(dev)}:{os.minor(dev)}"
    disk = tmp_path / "devices/block/sda"
    (disk / "sda2").mkdir(parents=True)
    (disk / "dev").write_text("8:0\n")
    (disk / "sda2/partition").write_text("2\n")
    sysblock = tmp_path / "sysblock"
    sysblock.mkdir()
    (sysblock / node).symlink_to(disk / "sda2")
    assert iolimit.disk_of(tmp_path, sysblock) == ("8:0" if os.major(dev) else None)
    (disk / "sda2/partition").unlink()
    assert iolimit.disk_of(tmp_path, sysblock) == (node if os.major(dev) else None)
    assert iolimit.disk_of(tmp_path / "missing", sysblock) is None


def test_no_block_device_or_no_controller_is_a_warning(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    v2 = CgroupsV2(tmp_path / "v2")
    v2_tree(tmp_path / "v2", "101")
    cfg = VeConfig.parse('IOLIMIT="1048576"\n')
    if shm.is_dir() and iolimit.disk_of(shm) is None:      # tmpfs: no block device
        warning = iolimit.apply(v2, "101", cfg, shm)
        assert warning.startswith("warning: IOLIMIT/IOPSLIMIT has no effect on this host")
        assert "without a block device" in warning
        assert iolimit.apply(v2, "101", VeConfig(), shm) == ""   # nothing asked
    groups = v1_tree(tmp_path / "v1", "101", controllers=("cpu", "memory"))
    v1 = CgroupsV1({c: tmp_path / "v1" / c for c in groups})
    if iolimit.disk_of(tmp_path) is not None:
        assert "blkio controller is not mounted" in iolimit.unusable(v1, tmp_path)
        assert "io controller" in iolimit.unusable(CgroupsV2(tmp_path / "none"), tmp_path)
