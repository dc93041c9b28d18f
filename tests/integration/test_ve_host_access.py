"""Host users cannot reach a VE's files: the overlay's shared copies were 0755.

``VZ_ROOT/shared/<sha>`` holds the unpacked cache, setuid programs included; with
the directory open to all, any host user could run them as root.
"""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.runtime_helpers import destroy_all, runtime_for, sh
from vzpkg.core.fstree import remove_tree
from vzpkg.runtime import layout
from vzpkg.runtime.ve import Runtime

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def rt() -> Iterator[Runtime]:
    # a host user must be able to walk down to VZ_ROOT: not under pytest's 0700 base
    base = Path(tempfile.mkdtemp(prefix="vzpkg-host-access-"))
    base.chmod(0o711)
    try:
        r = runtime_for(base)
        yield r
        destroy_all(r)
    finally:
        remove_tree(base)


def _as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    # through sh: setpriv keeps root's capabilities until its own exec, so the
    # program it execs directly would be found with CAP_DAC_OVERRIDE
    return subprocess.run([*NOBODY, "/bin/sh", "-c", 'exec "$@"', "sh", *argv],
                          capture_output=True, text=True, check=False, timeout=30)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_a_host_user_cannot_reach_the_shared_copies(rt: Runtime) -> None:
    ctid = 9331
    rt.create(ctid, "busybox-1", layout_name="overlay")
    shared = layout.shared_of(rt.paths, ctid)
    busybox = shared / "bin" / "busybox"
    busybox.chmod(0o4755)                   # a setuid program, as caches have
    # the test reaches the root at all: the VE root's parent is searchable by nobody
    assert _as_nobody("stat", str(rt.paths.root)).returncode == 0

    def denied() -> None:
        for argv in (["stat", str(busybox)], [str(busybox), "id", "-u"],
                     ["ls", str(shared)]):
            r = _as_nobody(*argv)
            assert r.returncode != 0 and "Permission denied" in r.stderr, (argv, r)

    denied()
    assert _mode(rt.paths.root / "shared") == 0o700
    # an older root made it 0755 and the others world-writable: the next vzctl fixes it
    for d, mode in (("shared", 0o755), ("lock", 0o1777), ("run", 0o777)):
        (rt.paths.root / d).chmod(mode)
    env = {"VZ_ROOT": str(rt.paths.root), "VZPKG_CACHE_DIR": str(rt.cache_dirs[0])}
    r = run_cli("vzctl", ["mount", str(ctid)], env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert _mode(rt.paths.root / "shared") == 0o700
    for d in ("lock", "run", "private", "root"):
        assert _mode(rt.paths.root / d) & 0o022 == 0, d
    denied()
    assert run_cli("vzctl", ["umount", str(ctid)], env=env, timeout=120).returncode == 0
    # the VE itself still runs its programs, the setuid one included
    rt.start(ctid)
    code, out = sh(rt, ctid, "busybox id -u && ls /bin/busybox")
    assert code == 0 and out.split() == ["0", "/bin/busybox"], out
