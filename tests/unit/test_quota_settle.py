"""A VE's disk image is copied from its pristine image at its first mount
(diskimage.settle_image), not at create: what create leaves, what a crash in the copy
leaves, and that an image once made is never copied over again.  Real mkfs.ext4,
e2fsck and xattrs on regular files; no mount, so no root."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from vzpkg.runtime import diskimage, quota
from vzpkg.runtime.paths import VzPaths

pytestmark = pytest.mark.skipif(shutil.which("mkfs.ext4") is None,
                                reason="needs e2fsprogs (mkfs.ext4, e2fsck)")

M = 1 << 20
LIMITS = quota.DiskLimits(space_soft=64 * 1024, space_hard=64 * 1024)
TREE = {"upper": None, "work": None, "lower": "../../shared/x"}


@pytest.fixture
def paths(tmp_path: Path) -> VzPaths:
    p = VzPaths(tmp_path / "vz")
    p.private_base.mkdir(parents=True)
    try:
        os.setxattr(p.private_base, "user.probe", b"1")
    except OSError:
        pytest.skip("no user xattrs where the tests run")
    return p


def fsck(img: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["e2fsck", "-fn", str(img)], capture_output=True, text=True,
                          check=False)


def marked(img: Path) -> bool:
    try:
        os.getxattr(img, diskimage.UNSETTLED)
    except OSError:
        return False
    return True


def test_create_writes_no_data_and_the_first_mount_makes_the_file_system(
        paths: VzPaths) -> None:
    diskimage.make_image(paths, 101, LIMITS, TREE)
    img = diskimage.image_path(paths, 101)
    assert img.stat().st_size == 64 * M and img.stat().st_blocks == 0 and marked(img)
    assert fsck(img).returncode != 0                    # not a file system yet
    diskimage.settle_image(img, 101)
    assert not marked(img)
    r = fsck(img)
    assert r.returncode == 0, r.stdout + r.stderr
    ls = subprocess.run(["debugfs", "-R", "ls -l /", str(img)], capture_output=True,
                        text=True, check=True).stdout
    assert "upper" in ls and "work" in ls and "lower" in ls, ls
    label = subprocess.run(["e2label", str(img)], capture_output=True, text=True,
                           check=True).stdout.strip()
    assert label == "ve101"


def test_a_torn_copy_is_made_again(paths: VzPaths) -> None:
    diskimage.make_image(paths, 102, LIMITS, TREE)
    img = diskimage.image_path(paths, 102)
    pristine = img.parent / diskimage.PRISTINE / (os.getxattr(img, diskimage.UNSETTLED).decode()
                                             + ".img")
    with open(pristine, "rb") as src, open(img, "r+b") as dst:   # half a copy, then junk
        dst.write(src.read(M))
        dst.seek(1024)
        dst.write(b"\xa5" * 4096)
    assert fsck(img).returncode != 0
    diskimage.settle_image(img, 102)
    r = fsck(img)
    assert r.returncode == 0, r.stdout + r.stderr


def test_an_image_without_the_mark_is_never_copied_over(paths: VzPaths) -> None:
    diskimage.make_image(paths, 103, LIMITS, TREE)
    img = diskimage.image_path(paths, 103)
    diskimage.settle_image(img, 103)
    with open(img, "r+b") as f:                         # what the VE wrote, say
        f.seek(32 * M)
        f.write(b"the VE's data")
    before = img.read_bytes()
    diskimage.settle_image(img, 103)
    assert img.read_bytes() == before


def test_each_image_gets_its_own_uuid(paths: VzPaths) -> None:
    uuids = []
    for ctid in (104, 105):
        diskimage.make_image(paths, ctid, LIMITS, TREE)
        img = diskimage.image_path(paths, ctid)
        diskimage.settle_image(img, ctid)
        out = subprocess.run(["dumpe2fs", "-h", str(img)], capture_output=True, text=True,
                             check=True).stdout
        uuids.append(next(line for line in out.splitlines()
                          if line.startswith("Filesystem UUID")))
    assert uuids[0] != uuids[1]
    # one pristine image served both; mkfs ran once
    assert len(list((paths.private_base / diskimage.PRISTINE).glob("*.img"))) == 1


def test_a_missing_pristine_image_is_a_clear_error(paths: VzPaths) -> None:
    diskimage.make_image(paths, 106, LIMITS, TREE)
    img = diskimage.image_path(paths, 106)
    for p in (paths.private_base / diskimage.PRISTINE).glob("*.img"):
        p.unlink()
    with pytest.raises(quota.QuotaError, match="pristine image") as exc:
        diskimage.settle_image(img, 106)
    assert "vzctl destroy 106" in (exc.value.hint or "")
    assert marked(img) and img.stat().st_blocks == 0       # nothing half-done
