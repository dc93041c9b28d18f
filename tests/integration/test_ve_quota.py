"""Disk quota, for real: VEs on disk images of their own (vzpkg.runtime.quota), busybox
VEs in user namespaces, writes with dd inside them, vzctl/vzlist/vzquota as an
administrator runs them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.conftest import assert_user_error
from tests.runtime_helpers import destroy_all, runtime_for, sh, vzctl_cli
from vzpkg.runtime import diskgrace, diskimage
from vzpkg.runtime.ve import Runtime

M = 1 << 20


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    r = runtime_for(tmp_path_factory.mktemp("quota"))
    yield r
    destroy_all(r)
    assert not _loops(r), "a loop device outlived its VE"
    assert not _mounts(r), "a mount outlived its VE"


def _loops(rt: Runtime) -> list[str]:
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if str(rt.paths.root) in line]


def _mounts(rt: Runtime) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if str(rt.paths.root) in line]


def ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    return r.stdout + r.stderr


def df(rt: Runtime, ctid: int, inodes: bool = False) -> tuple[int, int]:
    """(size, used) of / in the VE, in KiB or inodes, as its df says."""
    code, out = sh(rt, ctid, "df -P -i / " if inodes else "df -P -k /")
    assert code == 0, out
    fields = out.strip().splitlines()[-1].split()
    return int(fields[1]), int(fields[2])


def write(rt: Runtime, ctid: int, path: str, mib: int) -> tuple[int, str]:
    return sh(rt, ctid, f"dd if=/dev/zero of={path} bs=1M count={mib} && sync")


def vzquota(rt: Runtime, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VZ_ROOT": str(rt.paths.root)}
    return subprocess.run([sys.executable, "-m", "vzpkg.cli.vzquota", *args], env=env,
                          capture_output=True, text=True, check=False, timeout=60)


def can_grow_online() -> bool:
    """EXT4_IOC_RESIZE_FS asks for CAP_SYS_RESOURCE (some sandboxes drop it)."""
    with open("/proc/self/status") as f:
        eff = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    return bool(eff & (1 << 24))


def test_a_write_past_the_hard_limit_fails_and_spares_the_host_and_other_ves(
        rt: Runtime) -> None:
    ok(vzctl_cli(rt, "create", "301", "--ostemplate", "busybox-1",
                 "--diskspace", "30M:32M"))
    ok(vzctl_cli(rt, "create", "302", "--ostemplate", "busybox-1", "--layout", "overlay",
                 "--diskspace", "64M"))
    assert 'DISKSPACE="30720:32768"' in rt.paths.conf(301).read_text()
    ok(vzctl_cli(rt, "start", "301"))
    ok(vzctl_cli(rt, "start", "302"))
    size, _ = df(rt, 301)
    assert 24 * 1024 < size <= 32 * 1024, "df in the VE shows its limit"
    host_free = os.statvfs(rt.paths.root).f_bavail * os.statvfs(rt.paths.root).f_frsize
    code, out = write(rt, 301, "/big", 64)
    assert code != 0 and "No space left on device" in out, out
    # the host gave the VE no more than its image: the file system around it is untouched
    img = diskimage.image_path(rt.paths, 301)
    assert img.stat().st_size == 32 * M and img.stat().st_blocks * 512 <= 32 * M
    after = os.statvfs(rt.paths.root).f_bavail * os.statvfs(rt.paths.root).f_frsize
    assert host_free - after < 40 * M
    # another VE writes what the first could not
    code, out = write(rt, 302, "/data", 40)
    assert code == 0, out
    assert df(rt, 302)[0] > 48 * 1024
    ok(vzctl_cli(rt, "exec", "302", "rm /data"))


def test_a_live_raise_lets_the_same_write_succeed(rt: Runtime) -> None:
    ok(vzctl_cli(rt, "exec", "301", "rm -f /big; sync"))
    out = ok(vzctl_cli(rt, "set", "301", "--diskspace", "16M"))
    assert "applied to running VE 301" in out
    code, out = write(rt, 301, "/f", 20)
    assert code != 0 and "No space left on device" in out, out
    ok(vzctl_cli(rt, "exec", "301", "rm -f /f; sync"))
    ok(vzctl_cli(rt, "set", "301", "--diskspace", "32M"))
    code, out = write(rt, 301, "/f", 20)
    assert code == 0, out
    # lowering below what the VE holds is refused, and nothing changes
    r = vzctl_cli(rt, "set", "301", "--diskspace", "16M", "--save")
    assert_user_error(r, "uses more disk space than the new limit", "nothing was changed")
    assert 'DISKSPACE="30720:32768"' in rt.paths.conf(301).read_text()
    code, out = write(rt, 301, "/g", 4)
    assert code == 0, out
    # past the image's size: online resize where vzctl may (CAP_SYS_RESOURCE)
    r = vzctl_cli(rt, "set", "301", "--diskspace", "48M")
    if can_grow_online():
        ok(r)
        assert df(rt, 301)[0] > 40 * 1024
    else:
        assert_user_error(r, "CAP_SYS_RESOURCE", "nothing was changed", "--save")
        assert diskimage.image_path(rt.paths, 301).stat().st_size == 32 * M
    ok(vzctl_cli(rt, "exec", "301", "rm -f /f /g; sync"))


def test_the_inode_limit_holds(rt: Runtime) -> None:
    ok(vzctl_cli(rt, "create", "303", "--ostemplate", "busybox-1",
                 "--diskspace", "32M", "--diskinodes", "2000:2000"))
    ok(vzctl_cli(rt, "start", "303"))
    total, _ = df(rt, 303, inodes=True)
    assert 2000 <= total <= 2100, total
    code, out = sh(rt, 303, "mkdir /many && cd /many && i=0; "
                            "while [ $i -lt 2500 ]; do : > f$i || exit 1; i=$((i+1)); done")
    assert code != 0 and "No space left on device" in out, out
    total2, used2 = df(rt, 303, inodes=True)
    assert total2 == total and used2 >= total - 2
    ok(vzctl_cli(rt, "exec", "303", "rm -rf /many"))
    r = vzctl_cli(rt, "set", "303", "--diskinodes", "5000")
    assert_user_error(r, "DISKINODES", "set when it is made")


def test_limits_survive_a_restart_and_are_reported(rt: Runtime) -> None:
    ok(vzctl_cli(rt, "set", "301", "--diskspace", "20M:24M", "--quotatime", "600",
                 "--save"))
    conf = rt.paths.conf(301).read_text()
    assert 'DISKSPACE="20480:24576"' in conf and 'QUOTATIME="600"' in conf
    ok(vzctl_cli(rt, "restart", "301"))
    size, _ = df(rt, 301)
    assert 16 * 1024 < size <= 24 * 1024, "the restarted VE's disk is the saved limit"
    assert diskimage.image_path(rt.paths, 301).stat().st_size == 24 * M
    code, out = write(rt, 301, "/f", 30)
    assert code != 0 and "No space left on device" in out, out
    ok(vzctl_cli(rt, "exec", "301", "rm -f /f; sync"))
    # a stopped VE is resized offline; the next start has the new size
    ok(vzctl_cli(rt, "stop", "301"))
    ok(vzctl_cli(rt, "set", "301", "--diskspace", "40M", "--save"))
    ok(vzctl_cli(rt, "start", "301"))
    assert df(rt, 301)[0] > 32 * 1024
    env = {**os.environ, "VZ_ROOT": str(rt.paths.root)}
    r = subprocess.run([sys.executable, "-m", "vzpkg.cli.vzlist", "-a", "-j", "301"],
                       env=env, capture_output=True, text=True, check=True)
    row = json.loads(r.stdout)[0]
    assert row["diskspace.h"] == 40960 and row["diskspace.s"] == 40960
    assert 0 < row["diskspace"] < 40960
    r = vzquota(rt, "stat", "301")
    lines = ok(r).splitlines()
    assert lines[1].split()[0] == "1k-blocks" and lines[1].split()[3] == "40960"
    data = json.loads(ok(vzquota(rt, "stat", "301", "-j")))
    assert data["diskspace"]["hardlimit"] == 40960 and data["quotatime"] == 600
    ok(vzctl_cli(rt, "stop", "301"))
    stopped = json.loads(ok(vzquota(rt, "stat", "301", "-j")))
    assert abs(stopped["diskspace"]["usage"] - data["diskspace"]["usage"]) < 1024


@pytest.mark.parametrize("value, needle", [
    ("-5", "not a size"), ("99999999T", "too large"), ("1M", "out of range"),
    ("abc", "not a size"), ("2G:1G", "barrier must not be above the limit"),
    ("1G:2G:3G", "barrier:limit"),
])
def test_bad_values_are_refused_and_nothing_changes(rt: Runtime, value: str,
                                                    needle: str) -> None:
    r = vzctl_cli(rt, "create", "309", "--ostemplate", "busybox-1", "--diskspace", value)
    assert_user_error(r, "--diskspace", needle)
    assert r.returncode == 2
    assert not rt.paths.conf(309).exists() and not rt.paths.private(309).exists()
    assert not diskimage.image_path(rt.paths, 309).exists()
    before = rt.paths.conf(302).read_text()
    r = vzctl_cli(rt, "set", "302", "--diskspace", value, "--save")
    assert_user_error(r, "--diskspace", needle)
    assert rt.paths.conf(302).read_text() == before


def test_what_cannot_be_done_is_said(rt: Runtime) -> None:
    r = vzctl_cli(rt, "create", "309", "--ostemplate", "busybox-1",
                  "--diskinodes", "-1")
    assert_user_error(r, "--diskinodes")
    before = rt.paths.conf(302).read_text()
    r = vzctl_cli(rt, "set", "302", "--quotaugidlimit", "100", "--save")
    assert_user_error(r, "QUOTAUGIDLIMIT", "second-level quota", "EPERM")
    ok(vzctl_cli(rt, "create", "304", "--ostemplate", "busybox-1"))
    r = vzctl_cli(rt, "set", "304", "--diskspace", "1G", "--save")
    assert_user_error(r, "created without a disk limit", "nothing was changed")
    assert "DISKSPACE" not in rt.paths.conf(304).read_text()
    r = vzctl_cli(rt, "set", "302", "--diskspace", "unlimited", "--save")
    assert_user_error(r, "cannot be unlimited")
    assert rt.paths.conf(302).read_text() == before
    assert_user_error(vzquota(rt, "stat", "304"), "no disk quota")


def test_the_balloon_is_out_of_the_ves_reach(rt: Runtime) -> None:
    ok(vzctl_cli(rt, "create", "306", "--ostemplate", "busybox-1", "--diskspace", "32M"))
    ok(vzctl_cli(rt, "start", "306"))
    before = rt.paths.conf(306).read_text()
    for plant in ("ln -s /etc/passwd /.vzquota-balloon", ": > /.vzquota-balloon",
                  "mkfifo /.vzquota-balloon"):
        ok(vzctl_cli(rt, "exec", "306", f"rm -f /.vzquota-balloon; {plant}"))
        r = vzctl_cli(rt, "set", "306", "--diskspace", "20M", "--save")
        assert_user_error(r, "not vzctl's", "remove /.vzquota-balloon")
        assert rt.paths.conf(306).read_text() == before
    code, out = sh(rt, 306, "ls -l /etc/passwd /.vzquota-balloon")
    assert code == 0 and "prw" in out, out       # the planted FIFO, left as it was
    ok(vzctl_cli(rt, "exec", "306", "rm -f /.vzquota-balloon"))
    ok(vzctl_cli(rt, "set", "306", "--diskspace", "20M"))
    code, out = sh(rt, 306, "rm -f /.vzquota-balloon; : > /.vzquota-balloon; "
                            "mv /.vzquota-balloon /x; chattr -i /.vzquota-balloon")
    assert code != 0 and "Operation not permitted" in out, out
    code, out = write(rt, 306, "/f", 24)
    assert code != 0 and "No space left on device" in out, out
    ok(vzctl_cli(rt, "destroy", "306", "--force"))


def test_destroy_leaves_no_image_loop_or_mount(rt: Runtime) -> None:
    for ctid in (301, 302, 303):
        ok(vzctl_cli(rt, "destroy", str(ctid), "--force"))
        assert not diskimage.image_path(rt.paths, ctid).exists()
        assert not rt.paths.private(ctid).exists()
    assert not _loops(rt)
    assert not [m for m in _mounts(rt) if "/private/" in m]


def _marked(img: os.PathLike[str]) -> bool:
    """The image still waits for its first mount to be made (diskimage.settle_image)."""
    try:
        os.getxattr(img, diskimage.UNSETTLED)
    except OSError:
        return False
    return True


def test_a_new_image_is_clean_and_leaves_nothing_to_write_later(rt: Runtime) -> None:
    """Create writes nothing into the image (a sparse file marked with its pristine
    image); its first mount makes it: a file system that passes e2fsck, has its
    inode tables marked zeroed (no lazyinit writes behind a VE's back after its
    first start) and a journal that reads as zeros, with a UUID of its own."""
    ok(vzctl_cli(rt, "create", "312", "--ostemplate", "busybox-1", "--layout", "overlay",
                 "--diskspace", "256M"))
    img = diskimage.image_path(rt.paths, 312)
    assert not [m for m in _mounts(rt) if "/private/312 " in m], "mounted at create"
    assert img.stat().st_size == 256 * M and img.stat().st_blocks == 0
    assert _marked(img)
    ok(vzctl_cli(rt, "create", "313", "--ostemplate", "busybox-1", "--layout", "overlay",
                 "--diskspace", "256M"))
    img2 = diskimage.image_path(rt.paths, 313)
    for ctid in ("312", "313"):          # the first mount, and nothing else
        ok(vzctl_cli(rt, "mount", ctid))
        ok(vzctl_cli(rt, "umount", ctid))
    assert not _marked(img) and not _marked(img2)
    fsck = subprocess.run(["e2fsck", "-fn", str(img)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    groups = subprocess.run(["dumpe2fs", str(img)], capture_output=True,
                            text=True).stdout
    lines = [g for g in groups.splitlines() if re.match(r"Group \d+:", g)]
    assert lines and all("ITABLE_ZEROED" in g for g in lines), lines[:3]
    # only metadata was written: the sparse image holds well under 1 MiB
    assert img.stat().st_blocks * 512 < 1 << 20, img.stat().st_blocks
    # a second VE of the same size is a copy of the same pristine image, with a
    # UUID and label of its own (blkid, fsid) and just as clean
    fsck = subprocess.run(["e2fsck", "-fn", str(img2)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    ids = [subprocess.run(["blkid", "-o", "export", str(i)], capture_output=True,
                          text=True).stdout for i in (img, img2)]
    uuids = [re.search(r"^UUID=(\S+)", t, re.M) for t in ids]
    assert uuids[0] and uuids[1] and uuids[0][1] != uuids[1][1], ids
    assert "LABEL=ve312" in ids[0] and "LABEL=ve313" in ids[1], ids
    for ctid in ("312", "313"):
        ok(vzctl_cli(rt, "start", ctid))
        code, out = sh(rt, int(ctid), "ls -d /bin && echo x > /f && cat /f")
        assert code == 0 and "x" in out, out
        ok(vzctl_cli(rt, "destroy", ctid, "--force"))


def _pristine_of(img: os.PathLike[str]) -> str:
    key = os.getxattr(img, diskimage.UNSETTLED).decode()
    return os.path.join(os.path.dirname(img), diskimage.PRISTINE, key + ".img")


def test_an_image_torn_by_a_crash_before_the_first_start_is_made_again(
        rt: Runtime) -> None:
    """A crash in the middle of the first mount's copy (simulated: the copy made,
    then holes punched into it and junk written over its superblock, the mark
    still there) leaves an image that a start makes afresh."""
    ok(vzctl_cli(rt, "create", "314", "--ostemplate", "busybox-1", "--layout", "overlay",
                 "--diskspace", "64M"))
    img = diskimage.image_path(rt.paths, 314)
    with open(_pristine_of(img), "rb") as src, open(img, "r+b") as dst:
        dst.write(src.read(8 * M))
    for off in (0, 4096, 1 << 20, 2 << 20):      # group descriptors, tables, root dir
        subprocess.run(["fallocate", "-p", "-o", str(off), "-l", "65536", str(img)],
                       check=True)
    with open(img, "r+b") as f:
        f.seek(1024)
        f.write(b"\xa5" * 1024)
    assert _marked(img)
    ok(vzctl_cli(rt, "start", "314"))
    code, out = sh(rt, 314, "echo kept > /f && cat /f && ls /bin/sh")
    assert code == 0 and "kept" in out, out
    assert 48 * 1024 < df(rt, 314)[0] <= 64 * 1024
    ok(vzctl_cli(rt, "stop", "314"))
    fsck = subprocess.run(["e2fsck", "-fn", str(img)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_an_image_once_mounted_is_never_made_again(rt: Runtime) -> None:
    """After its first mount the image carries no mark: what the VE wrote stays,
    through restarts and an offline resize."""
    img = diskimage.image_path(rt.paths, 314)
    assert not _marked(img)
    ok(vzctl_cli(rt, "start", "314"))
    code, out = sh(rt, 314, "cat /f")
    assert code == 0 and "kept" in out, out
    ok(vzctl_cli(rt, "stop", "314"))
    ok(vzctl_cli(rt, "set", "314", "--diskspace", "80M", "--save"))
    ok(vzctl_cli(rt, "start", "314"))
    code, out = sh(rt, 314, "cat /f")
    assert code == 0 and "kept" in out, out
    assert df(rt, 314)[0] > 64 * 1024
    ok(vzctl_cli(rt, "destroy", "314", "--force"))


@pytest.mark.parametrize("mib", [96, 40])
def test_a_resize_before_the_first_start_keeps_the_new_size(rt: Runtime,
                                                            mib: int) -> None:
    ok(vzctl_cli(rt, "create", "315", "--ostemplate", "busybox-1", "--layout", "overlay",
                 "--diskspace", "64M"))
    ok(vzctl_cli(rt, "set", "315", "--diskspace", f"{mib}M", "--save"))
    img = diskimage.image_path(rt.paths, 315)
    assert img.stat().st_size == mib * M and not _marked(img)
    ok(vzctl_cli(rt, "start", "315"))
    assert (mib - 16) * 1024 < df(rt, 315)[0] <= mib * 1024
    ok(vzctl_cli(rt, "restart", "315"))
    assert (mib - 16) * 1024 < df(rt, 315)[0] <= mib * 1024
    assert img.stat().st_size == mib * M
    ok(vzctl_cli(rt, "destroy", "315", "--force"))


def test_a_missing_pristine_image_is_a_clear_error(rt: Runtime) -> None:
    ok(vzctl_cli(rt, "create", "316", "--ostemplate", "busybox-1", "--layout", "overlay",
                 "--diskspace", "72M"))
    img = diskimage.image_path(rt.paths, 316)
    pristine = _pristine_of(img)
    os.rename(pristine, pristine + ".away")
    try:
        r = vzctl_cli(rt, "start", "316")
        assert_user_error(r, "pristine image", "missing", "vzctl destroy 316")
        assert _marked(img) and img.stat().st_blocks == 0
        assert not [m for m in _mounts(rt) if "/316 " in m]
    finally:
        os.rename(pristine + ".away", pristine)
    ok(vzctl_cli(rt, "start", "316"))
    ok(vzctl_cli(rt, "destroy", "316", "--force"))


def test_an_overlay_ve_on_an_image_keeps_its_shared_copy(rt: Runtime) -> None:
    """A stopped overlay VE's image is not mounted; destroying another VE of the same
    cache must still see that the shared copy is in use, and destroying the VE on
    the image must let the copy go."""
    ok(vzctl_cli(rt, "create", "310", "--ostemplate", "busybox-1", "--layout", "overlay",
                 "--diskspace", "32M"))
    ok(vzctl_cli(rt, "create", "311", "--ostemplate", "busybox-1", "--layout", "overlay"))
    shared = sorted((rt.paths.root / "shared").glob("*[0-9a-f]"))
    assert len(shared) == 1 and shared[0].is_dir(), shared
    ok(vzctl_cli(rt, "destroy", "311", "--force"))
    assert shared[0].is_dir(), "the shared copy of a stopped VE on an image was removed"
    ok(vzctl_cli(rt, "start", "310"))
    code, out = sh(rt, 310, "echo hi > /f && cat /f && ls /bin/sh")
    assert code == 0 and "hi" in out, out
    ok(vzctl_cli(rt, "destroy", "310", "--force"))
    assert not shared[0].exists(), "the shared copy outlived its last VE"


def test_past_the_soft_limit_for_longer_than_quotatime_the_soft_limit_holds(
        rt: Runtime) -> None:
    """The event helper looks at soft limits about every second (diskgrace.grace_tick)."""
    ok(vzctl_cli(rt, "create", "305", "--ostemplate", "busybox-1",
                 "--diskspace", "16M:40M", "--quotatime", "2"))
    ok(vzctl_cli(rt, "start", "305"))
    code, out = write(rt, 305, "/a", 20)          # past the soft limit, within the hard
    assert code == 0, out
    deadline = time.monotonic() + 30
    while True:                                   # grace: 2 s, then the soft limit holds
        code, out = write(rt, 305, "/b", 4)
        if code != 0:
            assert "No space left on device" in out, out
            break
        ok(vzctl_cli(rt, "exec", "305", "rm -f /b"))
        assert time.monotonic() < deadline, "the soft limit never took hold"
        time.sleep(0.5)
    assert diskgrace.grace_file(rt.paths, 305).exists()
    ok(vzctl_cli(rt, "exec", "305", "rm -f /a /b; sync"))
    deadline = time.monotonic() + 30              # back under it: the hard limit again
    while diskgrace.grace_file(rt.paths, 305).exists():
        assert time.monotonic() < deadline, "the space never came back"
        time.sleep(0.3)
    code, out = write(rt, 305, "/a", 24)
    assert code == 0, out
    ok(vzctl_cli(rt, "destroy", "305", "--force"))
