"""Odd values given to vzctl set and a planted mount point: clean refusals."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import assert_user_error
from tests.runtime_helpers import destroy_all, runtime_for
from vzpkg.runtime.params import possible_cpus
from vzpkg.runtime.ve import Runtime

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

CTID = 9341


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    r = runtime_for(tmp_path_factory.mktemp("odd"))
    r.create(CTID, "busybox-1", layout_name="plain")
    yield r
    destroy_all(r)


def _vzctl(rt: Runtime, *args: str, as_limit: int | None = None
           ) -> subprocess.CompletedProcess[str]:
    """vzctl as a user runs it; with *as_limit*, under that address-space limit."""
    def limit() -> None:
        if as_limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (as_limit, as_limit))

    env = {**os.environ, "VZ_ROOT": str(rt.paths.root),
           "VZPKG_CACHE_DIR": str(rt.cache_dirs[0])}
    return subprocess.run([sys.executable, "-m", "vzpkg.cli.vzctl", *args], env=env,
                          preexec_fn=limit, capture_output=True, text=True, check=False,
                          timeout=120)


def test_set_a_huge_cpumask_is_refused_quickly_in_little_memory(rt: Runtime) -> None:
    before = rt.paths.conf(CTID).read_text()
    t0 = time.monotonic()
    r = _vzctl(rt, "set", str(CTID), "--cpumask", "0-30000000", "--save",
               as_limit=512 << 20)
    took = time.monotonic() - t0
    n = possible_cpus()
    assert_user_error(r, "--cpumask", "30000000", f"the host's CPUs are 0-{n - 1}")
    assert took < 20, took
    assert rt.paths.conf(CTID).read_text() == before
    # a mask the host has is still taken
    r = _vzctl(rt, "set", str(CTID), "--cpumask", f"0-{n - 1}", "--save")
    assert r.returncode == 0, r.stderr
    assert rt.config(CTID).get("CPUMASK") in (f"0-{n - 1}", "0")


def _mount_points() -> set[str]:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        return {line.split(" ")[4].replace("\\040", " ") for line in f}


def test_mount_does_not_follow_a_planted_mount_point_link(rt: Runtime,
                                                          tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "file").write_text("host data\n")
    point = rt.paths.ve_root(CTID)
    if point.is_dir() and not point.is_symlink():
        point.rmdir()
    point.symlink_to(elsewhere)
    r = _vzctl(rt, "mount", str(CTID))
    assert r.returncode == 0, r.stderr
    try:
        assert "Traceback" not in r.stderr
        assert str(elsewhere) not in _mount_points(), "mounted through the link"
        assert point.is_dir() and not point.is_symlink()
        assert str(point) in _mount_points()
        assert (point / "bin/busybox").exists()
        assert [p.name for p in elsewhere.iterdir()] == ["file"]
    finally:
        r = _vzctl(rt, "umount", str(CTID))
    assert r.returncode == 0, r.stderr
    assert str(point) not in _mount_points() and str(elsewhere) not in _mount_points()


def test_mount_refuses_a_private_area_that_is_a_link(rt: Runtime, tmp_path: Path) -> None:
    private = rt.paths.private(CTID)
    moved = tmp_path / "moved-private"
    private.rename(moved)
    private.symlink_to(moved)
    try:
        before = _mount_points()
        r = _vzctl(rt, "mount", str(CTID))
        assert_user_error(r, str(private), "symbolic link", "hint:")
        assert _mount_points() == before
    finally:
        private.unlink()
        moved.rename(private)
