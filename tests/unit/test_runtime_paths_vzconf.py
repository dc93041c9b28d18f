"""vz.conf's VE_ROOT, VE_PRIVATE and TEMPLATE put VEs and caches where OpenVZ's
settings say; unset, everything stays under VZ_ROOT."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vzpkg.core.errors import ConfigError
from vzpkg.runtime.paths import VzPaths


def _vzconf(root: Path, text: str) -> VzPaths:
    (root / "etc/vz").mkdir(parents=True, exist_ok=True)
    (root / "etc/vz/vz.conf").write_text(text)
    return VzPaths(root)


def test_without_settings_everything_is_under_vz_root(tmp_path: Path) -> None:
    paths = _vzconf(tmp_path, 'VE_LAYOUT="plain"\n#VE_PRIVATE="/elsewhere/$VEID"\n')
    assert paths.private(101) == tmp_path / "private/101"
    assert paths.ve_root(101) == tmp_path / "root/101"
    assert paths.template_cache == tmp_path / "template/cache"
    assert VzPaths(tmp_path / "none").private(7) == tmp_path / "none/private/7"


def test_openvz_settings_are_honoured_and_reread(tmp_path: Path) -> None:
    paths = _vzconf(tmp_path / "vz", f'VE_ROOT="{tmp_path}/r/$VEID"\n'
                                     f'VE_PRIVATE="{tmp_path}/p/${{VEID}}/"\n'
                                     f'TEMPLATE="{tmp_path}/t"\n')
    assert paths.private(101) == tmp_path / "p/101"
    assert paths.ve_root(101) == tmp_path / "r/101"
    assert paths.private_base == tmp_path / "p" and paths.root_base == tmp_path / "r"
    assert paths.template_cache == tmp_path / "t/cache"
    assert paths == VzPaths(tmp_path / "vz") and hash(paths) == hash(VzPaths(tmp_path / "vz"))
    paths.global_conf.write_text(f'VE_PRIVATE="{tmp_path}/private2/$VEID"\n')
    assert paths.private(5) == tmp_path / "private2/5"          # a changed vz.conf counts
    assert paths.ve_root(5) == tmp_path / "vz/root/5"


@pytest.mark.parametrize("line", ['VE_PRIVATE="relative/$VEID"', 'VE_PRIVATE="/vz/private"',
                                  'VE_PRIVATE="/vz/$VEID/private"', 'VE_ROOT="/$VEID"',
                                  'VE_ROOT="/vz/../etc/$VEID"', 'TEMPLATE="template"'])
def test_a_bad_setting_names_vz_conf_and_the_fix(tmp_path: Path, line: str) -> None:
    paths = _vzconf(tmp_path, line + "\n")
    key = line.split("=")[0]
    with pytest.raises(ConfigError, match=f"vz.conf: {key}=") as ei:
        paths.private(1) if key == "VE_PRIVATE" else (
            paths.ve_root(1) if key == "VE_ROOT" else paths.template_cache)
    assert ei.value.hint and key in ei.value.hint


@pytest.mark.skipif(os.geteuid() != 0, reason="the directories are root's")
def test_ensure_makes_the_directories_root_only(tmp_path: Path) -> None:
    paths = _vzconf(tmp_path / "vz", f'VE_PRIVATE="{tmp_path}/ves/private/$VEID"\n'
                                     f'VE_ROOT="{tmp_path}/ves/root/$VEID"\n')
    paths.ensure()
    for d in ("ves/private", "ves/root"):
        assert (tmp_path / d).stat().st_mode & 0o777 == 0o700
    (tmp_path / "ves/root").chmod(0o755)        # host users could reach the VEs' files
    with pytest.raises(ConfigError, match=r"VE_ROOT: .*only root can enter") as ei:
        paths.ensure()
    assert ei.value.hint and f"chmod 700 {tmp_path}/ves/root" in ei.value.hint
