"""The kernel's table of mounts read back as the paths that were mounted: a space,
tab, newline or backslash in a name (written ``\\040 \\011 \\012 \\134``) is no
reason to take a mounted directory for an unmounted one, or the reverse.

The decoder is checked on lines the kernel writes for mounts these tests make (a
tmpfs, and a disk image through a loop device, as root; every mount is undone in a
``finally``), and the readers of the runtime on the same mounts."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from vzpkg.core import mountinfo
from vzpkg.runtime import diskmount, layout, libc

ODD = "ve 1\tb\\s\nx"           # a space, a tab, a backslash and a newline
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")


def test_every_escape_the_kernel_writes_is_undone() -> None:
    assert mountinfo.unescape(b"/vz/a\\040b\\011c\\012d\\134e") == "/vz/a b\tc\nd\\e"
    assert mountinfo.unescape(b"/plain") == "/plain"
    # bytes that are not UTF-8 come back as str(path) of that path has them
    assert mountinfo.unescape(b"/x\\040\xff") == os.fsdecode(b"/x \xff")


def test_a_line_of_the_table_is_split_before_it_is_decoded() -> None:
    line = (b"36 25 0:32 /a\\040b /vz/p\\011q rw,relatime shared:1 - tmpfs my\\040src "
            b"rw,size=1024k,x\\054y\n")
    (m,) = mountinfo.parse(line + b"garbage\n")
    assert m == mountinfo.Mount("/a b", "/vz/p\tq", "tmpfs", "my src",
                                ("rw", "size=1024k", "x,y"))


@contextlib.contextmanager
def _mounted(source: str, target: Path, fstype: str = "tmpfs") -> Iterator[Path]:
    target.mkdir()
    libc.mount(source, str(target), fstype, libc.MS_NODEV | libc.MS_NOSUID, "size=1m")
    try:
        yield target
    finally:
        with contextlib.suppress(OSError):
            libc.umount2(str(target), libc.MNT_DETACH)


@needs_root
def test_a_tmpfs_on_an_odd_name_is_found_where_it_was_mounted(tmp_path: Path) -> None:
    with _mounted("vz src\\\t", tmp_path / ODD) as point:
        raw = Path("/proc/self/mountinfo").read_bytes()
        # the kernel did escape it (else this test would prove nothing)
        assert b"ve\\0401\\011b\\134s\\012x" in raw
        (m,) = [m for m in mountinfo.read() if m.point == str(point)]
        assert (m.fstype, m.source) == ("tmpfs", "vz src\\\t")
        assert mountinfo.is_mount_point(point)
        assert not mountinfo.is_mount_point(tmp_path)


@needs_root
def test_the_runtime_tells_a_mounted_odd_name_from_its_escaped_spelling(
        tmp_path: Path) -> None:
    # a directory literally named as the kernel's half-decoded spelling of ODD
    spelled = tmp_path / "ve 1\\011b\\134s\\012x"
    spelled.mkdir()
    with _mounted("vz", tmp_path / ODD) as point:
        for is_mounted in (diskmount.is_mounted, layout.is_mounted):
            assert is_mounted(point)
            assert not is_mounted(spelled)


@needs_root
@pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="needs mkfs.ext4")
def test_the_loop_device_of_an_image_mounted_on_an_odd_name(tmp_path: Path) -> None:
    img, private = tmp_path / "ve.img", tmp_path / ODD
    with open(img, "wb") as f:
        f.truncate(16 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", str(img)], check=True,
                   capture_output=True)
    diskmount.mount(img, private, 0)
    try:
        assert diskmount.loop_of(private).startswith("/dev/loop")
    finally:
        try:
            diskmount.umount(private)
        finally:
            with contextlib.suppress(OSError):
                libc.umount2(str(private), libc.MNT_DETACH)
    assert not diskmount.is_mounted(private)
