"""Where lxcfs is, and the warning a VE start gives without it (runtime/lxcfs.py)."""

from __future__ import annotations

from pathlib import Path

from vzpkg.runtime import lxcfs

LINE = ("1179 27 0:549 / /var/lib/lxcfs rw,nosuid,nodev,relatime - fuse.lxcfs lxcfs "
        "rw,user_id=0,group_id=0,allow_other\n")
OTHER = "27 1 0:25 / / rw,relatime - ext4 /dev/vda rw\n"


def test_found_by_its_file_system_type(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(OTHER + LINE)
    assert lxcfs.find(info) == Path("/var/lib/lxcfs")
    assert lxcfs.missing(info) == ""
    info.write_text(OTHER + OTHER.replace("ext4", "fuse.sshfs"))
    assert lxcfs.find(info) is None
    warning = lxcfs.missing(info)
    assert warning.startswith("warning: lxcfs is not running") and "meminfo" in warning
    assert lxcfs.find(tmp_path / "nonexistent") is None


def test_files_it_covers_and_missing_ones_are_left_out(tmp_path: Path) -> None:
    assert {"proc/meminfo", "proc/cpuinfo", "proc/stat", "proc/uptime", "proc/loadavg",
            "proc/swaps"} <= set(lxcfs.FILES)
    (tmp_path / "proc").mkdir()
    assert lxcfs.open_files(tmp_path) == []      # lxcfs offers none of them there
    assert lxcfs.open_files(None) == []
    lxcfs.bind([], "/")                          # nothing to attach: nothing happens
