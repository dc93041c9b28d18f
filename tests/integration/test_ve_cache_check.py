"""vzctl create checks the cache tarball against its manifest in every layout.

The plain layout used to unpack whatever file sat under the cache's name; only the
overlay layout hashed it.  A tarball swapped for another valid one (or with bytes
appended) must be refused before anything is unpacked, and leave nothing behind.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import assert_user_error, run_cli
from tests.runtime_helpers import BUSYBOX_NAME, make_busybox_cache, make_busybox_tree

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

CTID = 9321


def _tamper(tarball: Path, how: str, work: Path) -> None:
    if how == "appended":
        with tarball.open("ab") as f:
            f.write(b"\0" * 512 + b"trailing bytes")
        return
    # another valid tarball in the same format, with a file the cache never had
    tree = make_busybox_tree(work / "tree")
    (tree / "planted").write_text("not from the cache\n")
    subprocess.run(["tar", "--zstd", "-cf", str(tarball), "--numeric-owner", "-C",
                    str(tree), "."], check=True)


@pytest.mark.parametrize("how", ["replaced", "appended"])
@pytest.mark.parametrize("lay", ["plain", "overlay"])
def test_create_refuses_a_tarball_that_is_not_the_manifest_s(
        tmp_path: Path, lay: str, how: str) -> None:
    caches = tmp_path / "caches"
    tarball = make_busybox_cache(caches)
    _tamper(tarball, how, tmp_path / "work")
    root = tmp_path / "vz"
    env = {"VZ_ROOT": str(root), "VZPKG_CACHE_DIR": str(caches)}
    r = run_cli("vzctl", ["create", str(CTID), "--ostemplate", "busybox-1",
                          "--layout", lay], env=env, timeout=300)
    assert_user_error(r, BUSYBOX_NAME, "does not match its manifest", "hint:")
    assert not (root / "private" / str(CTID)).exists()
    assert not (root / "etc/vz/conf" / f"{CTID}.conf").exists()
    assert not (root / "root" / str(CTID)).exists()
    assert list((root / "shared").iterdir()) == [], "a shared copy was left"
