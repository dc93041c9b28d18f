"""Runtime pieces that need no root: CTIDs, paths, addresses, pid files, caches, caps."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vzpkg.core.errors import UsageError, VeError
from vzpkg.runtime import caps, layout, net, state
from vzpkg.runtime.caches import CacheRef, file_sha256, find_cache
from vzpkg.runtime.paths import VzPaths, check_ctid


def test_ctid_must_be_a_positive_number() -> None:
    assert check_ctid("101") == 101
    for bad in ("0", "-1", "abc", "1.5", "", "1234567890"):
        with pytest.raises(UsageError, match="CTID"):
            check_ctid(bad)


def test_paths_under_one_root(tmp_path: Path) -> None:
    p = VzPaths.from_env({"VZ_ROOT": str(tmp_path)})
    assert p.conf(101) == tmp_path / "etc/vz/conf/101.conf"
    assert p.private(101) == tmp_path / "private/101"
    assert p.ve_root(101) == tmp_path / "root/101"
    assert p.template_cache == tmp_path / "template/cache"
    assert VzPaths.from_env({}).root == Path("/vz")
    p.ensure()
    for name in ("101.conf", "7.conf", "ve-basic.conf-sample", "x.conf", "0.conf"):
        (p.conf_dir / name).write_text("")
    assert p.ctids() == [7, 101]
    assert oct((tmp_path / "private").stat().st_mode & 0o777) == "0o700"


def test_ip_parsing_defaults_to_host_addresses() -> None:
    assert net.parse_ip("10.1.2.3").with_prefixlen == "10.1.2.3/32"
    assert net.parse_ip("10.1.2.3/24").with_prefixlen == "10.1.2.3/24"
    assert net.parse_ip("fd00::1").with_prefixlen == "fd00::1/128"
    with pytest.raises(UsageError, match="invalid IP"):
        net.parse_ip("10.1.2")


def test_host_wide_names_are_openvz_s_for_vz_and_tagged_for_other_roots() -> None:
    default = VzPaths(Path("/vz"))
    assert (default.host_ifname(101), default.cgroup_prefix) == ("veth101.0", "vzpkg")
    a, b = VzPaths(Path("/srv/vz-a")), VzPaths(Path("/srv/vz-b"))
    names = {p.host_ifname(101) for p in (default, a, b)}
    prefixes = {p.cgroup_prefix for p in (default, a, b)}
    assert len(names) == 3 and len(prefixes) == 3
    assert a.host_ifname(101) == VzPaths(Path("/srv/vz-a")).host_ifname(101)   # stable
    for p in (default, a, b):
        assert len(p.host_ifname(999999999)) <= 15  # IFNAMSIZ - 1


def test_a_root_reached_through_a_symlink_keeps_its_names(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    real, link = VzPaths(tmp_path / "real"), VzPaths(tmp_path / "link")
    assert (link.host_ifname(7), link.cgroup_prefix) == (real.host_ifname(7),
                                                         real.cgroup_prefix)


def test_pidfile_is_trusted_only_for_the_same_process(tmp_path: Path) -> None:
    pf = tmp_path / "1.pid"
    assert state.running_pid(pf) is None  # missing
    pf.write_text("garbage\n")
    assert state.running_pid(pf) is None
    state.write_pidfile(pf, os.getpid())
    assert state.running_pid(pf) == os.getpid()
    pf.write_text(f"{os.getpid()} 12345\n")  # a reused pid: other start time
    assert state.running_pid(pf) is None
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    state.write_pidfile(pf, child.pid)
    assert state.wait_exit(child.pid, 10)
    assert state.running_pid(pf) is None  # a zombie is not running
    child.wait()
    assert state.running_pid(pf) is None


def test_wait_exit_times_out_for_a_live_process() -> None:
    child = subprocess.Popen(["sleep", "5"])
    try:
        assert not state.wait_exit(child.pid, 0.1)
    finally:
        child.kill()
        child.wait()


def test_find_cache_short_and_full_names(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    arch = os.uname().machine
    (b / f"mini-1-{arch}-minimal.tar.zst").write_bytes(b"x")
    ref = find_cache("mini-1", [a, b])
    assert ref is not None and ref.name == f"mini-1-{arch}-minimal" and ref.sha256 is None
    assert ref.tarball.parent == b
    assert find_cache("other-1", [a, b]) is None
    assert ref.digest() == file_sha256(ref.tarball)


def test_cache_digest_must_match_manifest(tmp_path: Path) -> None:
    tb = tmp_path / "c.tar.zst"
    tb.write_bytes(b"payload")
    ok = CacheRef("c-1-x-y", tb, file_sha256(tb))
    assert ok.verify() == ok.sha256
    with pytest.raises(VeError, match="does not match its manifest"):
        CacheRef("c-1-x-y", tb, "0" * 64).verify()


def test_capability_set_is_documented_and_complete() -> None:
    assert not caps.VE_CAPS & set(caps.DROPPED)
    assert set(caps.CAP_NAMES) == caps.VE_CAPS | set(caps.DROPPED)
    mask = caps.ve_mask()
    for name in ("SYS_ADMIN", "SYS_MODULE", "SYS_TIME", "SYS_BOOT", "SYS_RAWIO", "MKNOD",
                 "DAC_READ_SEARCH", "SYS_PTRACE"):
        assert not mask & (1 << caps.CAP_NAMES[name])
        assert f"CAP_{name}" in (caps.__doc__ or "")
    assert mask & (1 << caps.CAP_NAMES["NET_ADMIN"])
    assert mask & (1 << caps.CAP_NAMES["CHOWN"])


def test_mount_detection() -> None:
    assert layout.is_mounted(Path("/"))
    assert layout.is_mounted(Path("/proc"))
    assert not layout.is_mounted(Path("/definitely/not/mounted"))
