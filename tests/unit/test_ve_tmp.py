"""Scripts are copied into the VE's /tmp from the host: never through a link
that the host would follow out of the VE."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from vzpkg.build.buildve import ve_tmp
from vzpkg.core.errors import BuildError


def test_a_missing_tmp_is_made_sticky(tmp_path: Path) -> None:
    tmp = ve_tmp(tmp_path)
    assert tmp == tmp_path / "tmp" and tmp.is_dir()
    assert tmp.stat().st_mode & stat.S_ISVTX


def test_an_existing_directory_is_used(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir(mode=0o755)
    assert ve_tmp(tmp_path) == tmp_path / "tmp"


@pytest.mark.parametrize("kind", ["link to a host directory", "dangling link", "file"])
def test_anything_but_a_directory_is_refused(tmp_path: Path, kind: str) -> None:
    host = tmp_path / "host-etc"
    host.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    if kind == "file":
        (root / "tmp").write_text("x")
    else:
        (root / "tmp").symlink_to(host if kind.startswith("link") else tmp_path / "nowhere")
    with pytest.raises(BuildError, match="not a directory"):
        ve_tmp(root)
    assert list(host.iterdir()) == []
