"""vzctl destroy removes a VE whose files hold a directory tree 1,500 levels deep.

shutil.rmtree recursed once per level and died with RecursionError, leaving the
VE's private area behind; a VE can make such a tree with ``mkdir d && cd d``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.runtime_helpers import destroy_all, runtime_for, sh
from vzpkg.runtime.ve import Runtime

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

DEEP = 'i=0; while [ $i -lt 1500 ]; do mkdir d && cd d || exit 1; i=$((i+1)); done; ' \
       'echo deep > leaf; ln -s / up; echo made'


@pytest.fixture
def rt(tmp_path: Path) -> Iterator[Runtime]:
    r = runtime_for(tmp_path)
    yield r
    destroy_all(r)


def test_destroy_a_ve_with_a_very_deep_tree(rt: Runtime) -> None:
    ctid = 9311
    rt.create(ctid, "busybox-1", layout_name="plain")
    rt.start(ctid)
    code, out = sh(rt, ctid, DEEP)
    assert (code, out.strip()) == (0, "made"), out
    env = {"VZ_ROOT": str(rt.paths.root), "VZPKG_CACHE_DIR": str(rt.cache_dirs[0])}
    r = run_cli("vzctl", ["destroy", "--force", str(ctid)], env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert not rt.paths.private(ctid).exists()
    assert not rt.paths.conf(ctid).exists()
    assert Path("/bin").is_dir()            # the planted "up -> /" link was not followed
