"""host_mirror() against apt source files, the YAML line map, and the shipped templates."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from vzpkg.core.errors import TemplateError
from vzpkg.core.gpg import Keyring
from vzpkg.core.settings import SHIPPED_HOOKS, SHIPPED_METADATA, Settings
from vzpkg.template.hostmirror import apt_sources, find_mirror, host_mirror
from vzpkg.template.loader import make_plan, validate_file
from vzpkg.template.model import ScriptStage
from vzpkg.template.schema import SCHEMA_FILE
from vzpkg.template.yamlpos import load_yaml

ONE_LINE = (
    "# comment line\n"
    "deb-src http://src.invalid/debian bookworm main\n"
    "deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
    "http://one.invalid/debian/ bookworm main\n"
    "deb http://one.invalid/debian-security bookworm-security main  # trailing comment\n")

DEB822 = """\
Types: deb
# http://snapshot.invalid/archive/debian/20250520T000000Z
URIs: http://two.invalid/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://two.invalid/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def _apt(tmp_path: Path, files: dict[str, str]) -> Path:
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    for name, text in files.items():
        (apt / name).write_text(text)
    return apt


def test_one_line_format(tmp_path: Path) -> None:
    apt = _apt(tmp_path, {"sources.list": ONE_LINE})
    assert host_mirror("debian", apt) == "http://one.invalid/debian"
    assert host_mirror("debian-security", apt) == "http://one.invalid/debian-security"
    assert all(s.uri != "http://src.invalid/debian" for s in apt_sources(apt))


def test_deb822_format(tmp_path: Path) -> None:
    apt = _apt(tmp_path, {"sources.list.d/debian.sources": DEB822})
    assert host_mirror("debian", apt) == "http://two.invalid/debian"
    assert host_mirror("debian-security", apt) == "http://two.invalid/debian-security"


def test_list_files_in_sources_list_d(tmp_path: Path) -> None:
    apt = _apt(tmp_path, {"sources.list.d/a.list": ONE_LINE,
                          "sources.list.d/b.sources": DEB822})
    assert host_mirror("debian", apt) == "http://one.invalid/debian"


def test_disabled_and_unrelated_entries(tmp_path: Path) -> None:
    apt = _apt(tmp_path, {"sources.list.d/x.sources": "Types: deb\nEnabled: no\n"
                          "URIs: http://off.invalid/debian\nSuites: bookworm\n\n"
                          "Types: deb\nURIs: https://deb.nodesource.invalid/node_20.x\n"
                          "Suites: nodistro\nComponents: main\n"})
    assert find_mirror("debian", apt) is None


def test_fallback_by_keyring_and_suite(tmp_path: Path) -> None:
    apt = _apt(tmp_path, {"sources.list": (
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        "http://three.invalid/pub bookworm main\n"
        "deb http://three.invalid/sec bookworm-security main\n")})
    assert host_mirror("debian", apt) == "http://three.invalid/pub"
    assert host_mirror("debian-security", apt) == "http://three.invalid/sec"


def test_missing_mirror_says_how_to_set_it(tmp_path: Path) -> None:
    apt = _apt(tmp_path, {})
    with pytest.raises(TemplateError) as info:
        host_mirror("debian-security", apt)
    hint = info.value.hint or ""
    assert "--set mirrors.debian_security=URL" in hint
    assert "VZPKG_MIRROR_DEBIAN_SECURITY=URL" in hint
    assert "/etc/vzpkg/mirrors.yaml" in hint


def test_line_map() -> None:
    data, lines = load_yaml("a: 1\nb:\n  c: [x,\n      y]\n  d:\n    - e: 2\n", "f.yaml")
    assert data == {"a": 1, "b": {"c": ["x", "y"], "d": [{"e": 2}]}}
    assert lines.line(("a",)) == 1
    assert lines.line(("b", "c", 1)) == 4
    assert lines.line(("b", "d", 0, "e")) == 6
    assert lines.line(("b", "d", 0, "missing")) == 6     # nearest ancestor


def _hermetic(tmp_path: Path) -> Settings:
    return Settings(workspace=None, cache_dir=tmp_path / "c")


ENV = {"VZPKG_MIRROR_DEBIAN": "http://mirror.invalid/debian",
       "VZPKG_MIRROR_DEBIAN_SECURITY": "http://mirror.invalid/debian-security"}


@pytest.mark.parametrize("name", ["debian", "fedora", "almalinux", "rocky"])
def test_shipped_templates_validate(tmp_path: Path, name: str) -> None:
    path = SHIPPED_METADATA / f"{name}.yaml"
    n = validate_file(path, _hermetic(tmp_path), env=ENV, apt_dir=tmp_path / "no-apt")
    assert n >= 4


def test_shipped_templates_match_schema_file() -> None:
    import yaml
    schema = json.loads(SCHEMA_FILE.read_text())
    for path in SHIPPED_METADATA.glob("*.yaml"):
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)


def test_shipped_debian_plan(tmp_path: Path) -> None:
    p = make_plan("debian-12-x86_64-minimal", _hermetic(tmp_path), env=ENV)
    assert [(r.name, r.url, r.suite) for r in p.repositories] == [
        ("main", "http://mirror.invalid/debian", "bookworm"),
        ("updates", "http://mirror.invalid/debian", "bookworm-updates"),
        ("security", "http://mirror.invalid/debian-security", "bookworm-security")]
    assert p.backend == "mmdebstrap" and p.target_arch == "amd64"
    assert {"iproute2", "procps", "ca-certificates"} <= set(p.packages)
    # bookworm's own archive and security keys, plus its release key
    fprs = {k.fingerprint for k in p.keys}
    assert {"B8B80B5B623EAB6AD8775C45B7C5D7D6350947F8",
            "05AB90340C0C5E797F44A8C8254CF3B5AEC0A8F0",
            "4D64FEC119C2029067D6E791F8D2585B8783D481"} <= fprs
    post = p.script(ScriptStage.POST_INSTALL)
    assert post is not None and post.path == SHIPPED_HOOKS / "debian" / "post-install.sh"
    default = make_plan("debian-12-x86_64-default", _hermetic(tmp_path), env=ENV)
    assert "openssh-server" in default.packages
    assert set(p.packages) < set(default.packages)


@pytest.mark.parametrize(("name", "fpr"), [
    ("fedora-42-x86_64-minimal", "B0F4950458F69E1150C6C5EDC8AC4916105EF944"),
    ("fedora-43-aarch64-minimal", "C6E7F081CF80E13146676E88829B606631645531"),
    ("almalinux-9-x86_64-minimal", "BF18AC2876178908D6E71267D36CB86CB86B3716"),
    ("rocky-9-x86_64-minimal", "21CB256AE16FC54C6E652949702D426D350D275D"),
])
def test_shipped_rpm_plans(tmp_path: Path, name: str, fpr: str) -> None:
    p = make_plan(name, _hermetic(tmp_path), env={})
    assert p.backend == "dnf"
    assert [k.fingerprint for k in p.keys] == [fpr]
    assert all((r.metalink or r.mirrorlist or "").startswith("https://") for r in p.repositories)
    assert all(p.arch in (r.metalink or r.mirrorlist or "") or p.distribution == "almalinux"
               for r in p.repositories)
    # the key imports into a real keyring under its pin
    with Keyring() as kr:
        assert kr.import_pinned(p.keys[0].armored, fpr, source=str(p.keys[0].file)) == fpr


def test_shipped_hooks_are_executable_shell() -> None:
    for hook in SHIPPED_HOOKS.rglob("*.sh"):
        assert hook.stat().st_mode & 0o111, hook
        assert hook.read_text().startswith("#!/bin/sh\n"), hook
