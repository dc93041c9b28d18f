"""Ownership shifted on disk (VE_IDMAP_MODE=shift, issue 13 section 1): where the file
system takes no idmapped mount, or when asked, create shifts every owner of a plain
VE's files from 0..65535 to its host range, and start binds its root as it is.  The
file system without idmapped mounts is a real one: ramfs (FS_ALLOW_IDMAP is not set
for it).  Real VEs (CTIDs 9760-9769)."""

from __future__ import annotations

import contextlib
import os
import resource
import stat
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime_helpers import destroy_all, make_busybox_cache, sh, vzctl_cli
from vzpkg.core.fstree import remove_tree
from vzpkg.runtime import idmap, libc
from vzpkg.runtime.idmap import IdRange
from vzpkg.runtime.idshift import ACL_ACCESS, ACL_DEFAULT, CAPS, shift_tree
from vzpkg.runtime.paths import VzPaths
from vzpkg.runtime.ve import Runtime

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

BASE = 1 << 30
IDS = IdRange(BASE)


def _acl(*entries: tuple[int, int, int]) -> bytes:
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


UNDEF = 0xFFFFFFFF
DEPTH = 300             # levels: more than the open files the walk is allowed below
# user::rwx user:1000:r-x group::r-x group:100:r-- mask::r-x other::r-x
ACL = _acl((0x01, 7, UNDEF), (0x02, 5, 1000), (0x04, 5, UNDEF), (0x08, 4, 100),
           (0x10, 5, UNDEF), (0x20, 5, UNDEF))
CAP_NET_RAW = 1 << 13
CAPS_V2 = struct.pack("<IIIII", 0x02000001, CAP_NET_RAW, 0, 0, 0)


def _hostile_tree(root: Path) -> dict[str, Path]:
    """A tree with what a cache may hold, and what a hostile one might."""
    root.mkdir()
    t = {n: root / n for n in ("su", "sgid", "dir", "acl", "cap", "odd", "fifo",
                               "lnk_out", "lnk_up", "hard1", "hard2", "deep")}
    t["su"].write_text("x")
    t["su"].chmod(0o4755)
    t["sgid"].write_text("x")
    os.chown(t["sgid"], 1000, 50)
    t["sgid"].chmod(0o2755)
    t["dir"].mkdir()
    t["dir"].chmod(0o2775)
    os.setxattr(t["dir"], ACL_DEFAULT, ACL)
    t["acl"].write_text("x")
    os.setxattr(t["acl"], ACL_ACCESS, ACL)
    t["cap"].write_text("x")
    t["cap"].chmod(0o755)
    os.setxattr(t["cap"], CAPS, CAPS_V2)
    t["odd"].write_text("x")
    os.chown(t["odd"], 70000, 0)          # outside 0..65535
    t["odd"].chmod(0o4755)
    os.mkfifo(t["fifo"])
    t["lnk_out"].symlink_to("/etc/passwd")   # a host file: never followed
    t["lnk_up"].symlink_to("../../..")
    t["hard1"].write_text("x")
    os.chown(t["hard1"], 5, 5)
    os.link(t["hard1"], t["hard2"])
    d = t["deep"]
    d.mkdir()
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(DEPTH):
            os.mkdir("d", dir_fd=fd)
            nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        os.close(os.open("f", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
        os.chown("f", 33, 33, dir_fd=fd)
    finally:
        os.close(fd)
    return t


@pytest.fixture
def tree_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    remove_tree(tmp_path / "tree")     # too deep for pytest's own clean-up


def test_shift_tree_shifts_owners_modes_acls_and_caps(tree_dir: Path) -> None:
    tmp_path = tree_dir
    t = _hostile_tree(tmp_path / "tree")
    passwd = os.stat("/etc/passwd")
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (DEPTH // 2, limits[1]))  # one level open
    try:
        done = shift_tree(tmp_path / "tree", IDS)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)
    after = os.stat("/etc/passwd")
    assert (after.st_uid, after.st_gid, after.st_mode) == \
        (passwd.st_uid, passwd.st_gid, passwd.st_mode)          # never followed
    assert (tmp_path.stat().st_uid, tmp_path.stat().st_gid) == (0, 0)   # nor ../../..

    def owner(p: Path) -> tuple[int, int, int]:
        st = p.lstat()
        return st.st_uid - BASE, st.st_gid - BASE, stat.S_IMODE(st.st_mode)

    assert owner(tmp_path / "tree")[:2] == (0, 0)
    assert owner(t["su"]) == (0, 0, 0o4755)          # chown cleared it; put back
    assert owner(t["sgid"]) == (1000, 50, 0o2755)
    assert owner(t["dir"]) == (0, 0, 0o2775)
    assert owner(t["fifo"])[:2] == owner(t["lnk_out"])[:2] == owner(t["lnk_up"])[:2] == (0, 0)
    assert owner(t["hard1"])[:2] == (5, 5)           # shifted once, not twice
    assert owner(t["odd"]) == (65534, 0, 0o755)      # nobody, and no setuid
    deep = t["deep"]
    fd = os.open(deep, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(DEPTH):
            nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        st = os.stat("f", dir_fd=fd)
        assert (st.st_uid, st.st_gid) == (BASE + 33, BASE + 33)
    finally:
        os.close(fd)
    # ACLs: named users and groups shifted, the rest as it was
    want = _acl((0x01, 7, UNDEF), (0x02, 5, BASE + 1000), (0x04, 5, UNDEF),
                (0x08, 4, BASE + 100), (0x10, 5, UNDEF), (0x20, 5, UNDEF))
    assert os.getxattr(t["acl"], ACL_ACCESS) == want
    assert os.getxattr(t["dir"], ACL_DEFAULT) == want
    # the capability: version 3, root id the VE's root, the same capabilities
    assert os.getxattr(t["cap"], CAPS) == struct.pack("<IIIIII", 0x03000001, CAP_NET_RAW,
                                                       0, 0, 0, BASE)
    assert (done.acls, done.caps, done.outside) == (2, 1, 1)
    assert done.files == 12 + DEPTH + 1 + 1 - 1      # entries, deep dirs, f, top; a link once


@pytest.fixture
def ramfs_root(tmp_path: Path) -> Iterator[Runtime]:
    """A VZ_ROOT on ramfs, a real file system that takes no idmapped mount."""
    vz = tmp_path / "vz"
    vz.mkdir()
    libc.mount("none", str(vz), "ramfs", 0, "mode=0755")
    try:
        if idmap.supported(vz):
            pytest.skip("ramfs takes idmapped mounts on this kernel: no file system "
                        "without them to test on")
        caches = tmp_path / "caches"
        make_busybox_cache(caches)
        rt = Runtime(VzPaths(vz), [caches])
        yield rt
        destroy_all(rt)
    finally:
        with contextlib.suppress(OSError):
            libc.umount2(str(vz), libc.MNT_DETACH)


def _mount_options(path: Path) -> list[str]:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        f = line.split()
        if f[4] == str(path):
            return f[5].split(",")
    raise AssertionError(f"{path} is not mounted")


def _check_shifted_ve(rt: Runtime, ctid: int, create: subprocess.CompletedProcess[str],
                      why: str) -> None:
    """VE *ctid*, just created shifted: the log says so, its files are owned BASE+id on
    disk, it boots the busybox tree as its own root, and goes without a trace."""
    assert create.returncode == 0, create.stderr
    cfg = rt.config(ctid)
    ids = IdRange.parse(cfg.get("VE_IDMAP") or "", where="test")
    assert cfg.get("VE_IDMAP_MODE") == "shift"
    assert f"VE {ctid}: shifted the owners of " in create.stdout, create.stdout
    assert f"to host ids {ids} on disk" in create.stdout and why in create.stdout
    assert "files shifted on disk" in create.stdout
    private = rt.paths.private(ctid)
    for p, (uid, gid) in ((private, (0, 0)), (private / "bin/busybox", (0, 0)),
                          (private / "etc/shadow", (0, 0)), (private / "tmp", (0, 0))):
        st = p.lstat()
        assert (st.st_uid - ids.base, st.st_gid - ids.base) == (uid, gid), p
    assert stat.S_IMODE((private / "tmp").stat().st_mode) == 0o1777
    # a stopped VE's command (its own chpasswd) works on the bound, shifted root
    r = vzctl_cli(rt, "set", str(ctid), "--userpasswd", "root:secret")
    assert r.returncode == 0, r.stderr
    st = (private / "etc/shadow").stat()
    assert (st.st_uid - ids.base, st.st_gid - ids.base) == (0, 0)
    assert "root:$6$" in (private / "etc/shadow").read_text()
    r = vzctl_cli(rt, "start", str(ctid))
    assert r.returncode == 0, r.stderr
    try:
        opts = _mount_options(rt.paths.ve_root(ctid))
        assert "idmapped" not in opts and "nodev" in opts, opts
        code, out = sh(rt, ctid, "id -u; stat -c '%u:%g %a' / /etc/shadow /tmp; "
                                 "echo hi > /root/made; touch /tmp/t && echo ok")
        assert code == 0, out
        assert out.split() == ["0", "0:0", "755", "0:0", "640", "0:0", "1777", "ok"], out
        st = (private / "root/made").stat()
        assert (st.st_uid, st.st_gid) == (ids.base, ids.base)     # the VE's root, on disk
        code, out = sh(rt, ctid, "cat /proc/self/uid_map")
        assert out.split() == ["0", str(ids.base), "65536"], out
    finally:
        r = vzctl_cli(rt, "stop", str(ctid))
        assert r.returncode == 0, r.stderr
    r = vzctl_cli(rt, "destroy", str(ctid))
    assert r.returncode == 0, r.stderr
    assert not private.exists() and not rt.paths.conf(ctid).exists()
    assert not rt.paths.ve_root(ctid).exists()


def test_a_file_system_without_idmapped_mounts_gets_its_files_shifted(
        ramfs_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rt = ramfs_root
    assert isinstance(rt, Runtime)
    # the overlay layout cannot be shifted (its lower layer is shared): a clear error
    r = vzctl_cli(rt, "create", "9761", "--ostemplate", "busybox-1", "--layout", "overlay")
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert "takes no idmapped mounts" in r.stderr and "--layout plain" in r.stderr, r.stderr
    assert not rt.paths.conf(9761).exists() and not rt.paths.private(9761).exists()
    # nor is an idmapped mount asked for by name
    r = vzctl_cli(rt, "create", "9761", "--ostemplate", "busybox-1", "--idmap-mode", "mount")
    assert r.returncode != 0 and "takes no idmapped mounts" in r.stderr, r.stderr
    assert not rt.paths.conf(9761).exists() and not rt.paths.private(9761).exists()
    r = vzctl_cli(rt, "create", "9760", "--ostemplate", "busybox-1")
    _check_shifted_ve(rt, 9760, r, f"because the file system of {rt.paths.private_base} "
                                   "takes no idmapped mounts")


def test_the_shift_can_be_asked_for_where_idmapped_mounts_work(tmp_path: Path) -> None:
    from tests.runtime_helpers import runtime_for
    rt = runtime_for(tmp_path)
    try:
        assert idmap.supported(tmp_path)
        r = vzctl_cli(rt, "create", "9762", "--ostemplate", "busybox-1",
                      "--layout", "overlay", "--idmap-mode", "shift")
        assert r.returncode == 2 and "plain layout only" in r.stderr, r.stderr
        assert not rt.paths.conf(9762).exists()
        r = vzctl_cli(rt, "create", "9763", "--ostemplate", "busybox-1",
                      "--idmap-mode", "shift")
        _check_shifted_ve(rt, 9763, r, "because VE_IDMAP_MODE is shift")
        # vz.conf's VE_IDMAP_MODE is the default; auto here is an idmapped mount
        r = vzctl_cli(rt, "create", "9764", "--ostemplate", "busybox-1")
        assert r.returncode == 0 and "idmapped mount" in r.stdout, r.stdout
        assert rt.config(9764).get("VE_IDMAP_MODE") == "mount"
        assert (rt.paths.private(9764) / "bin/busybox").stat().st_uid == 0
    finally:
        destroy_all(rt)
