"""A VE's root is mounted nodev: a device node planted in its files opens nothing.

The VE's own /dev is a tmpfs made at start, so its null, zero, tty ... still work;
setuid programs (nosuid is not set) still work too.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime_helpers import destroy_all, runtime_for, sh
from vzpkg.runtime.ve import Runtime

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    r = runtime_for(tmp_path_factory.mktemp("nodev"))
    yield r
    destroy_all(r)


def _mount_options(path: Path) -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields = line.split(" ")
            if fields[4] == str(path):
                return fields[5].split(",")
    raise AssertionError(f"{path} is not mounted")


@pytest.mark.parametrize("lay", ["plain", "overlay"])
def test_a_planted_device_node_cannot_be_opened(rt: Runtime, lay: str) -> None:
    ctid = 9351 if lay == "plain" else 9352
    rt.create(ctid, "busybox-1", layout_name=lay)
    files = rt.paths.private(ctid) / ("upper" if lay == "overlay" else "")
    # /dev/mem would be 1:1; 1:3 (null) is harmless should the test itself fail
    os.mknod(files / "mydev", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    rt.start(ctid)
    code, out = sh(rt, ctid, "echo x > /mydev")
    assert code != 0 and "Permission denied" in out, (code, out)
    code, out = sh(rt, ctid, "echo x > /dev/null && head -c 4 /dev/zero | wc -c")
    assert (code, out.strip()) == (0, "4"), out
    opts = _mount_options(rt.paths.ve_root(ctid))
    assert "nodev" in opts and "nosuid" not in opts and "rw" in opts, opts
    rt.stop(ctid, fast=True)
    rt.destroy(ctid)
