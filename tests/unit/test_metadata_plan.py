"""Rendering templates into Plans: names, sets, filters, overrides, digests."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from tests.metadata_helpers import (
    KEY_FPR,
    MIRROR,
    OTHER_KEY_FPR,
    Workspace,
    make_workspace,
)
from vzpkg.core.settings import Settings
from vzpkg.core.types import Compression
from vzpkg.template.loader import (
    all_plan_names,
    host_arch,
    list_templates,
    make_plan,
    parse_cache_name,
)
from vzpkg.template.model import Plan, ScriptStage


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return make_workspace(tmp_path / "ws")


def plan(ws: Workspace, name: str = "testdist-1-x86_64-minimal", **kw: object) -> Plan:
    kw.setdefault("env", {})
    return make_plan(name, ws.settings, **kw)  # type: ignore[arg-type]


def test_full_plan(ws: Workspace) -> None:
    p = plan(ws)
    assert (p.name, p.distribution, p.release, p.arch, p.target_arch, p.set_name) == (
        "testdist-1-x86_64-minimal", "testdist", "1", "x86_64", "amd64", "minimal")
    assert p.backend == "debootstrap"
    assert p.template_file == ws.template
    assert [(r.name, r.url, r.suite, r.components) for r in p.repositories] == [
        ("main", MIRROR, "alpha", ("main",))]
    assert [k.fingerprint for k in p.keys] == [KEY_FPR]
    assert p.keys[0].armored.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    assert p.packages == ("iproute2", "procps")
    assert p.options.compression is Compression.ZSTD and p.options.trim_docs
    post = p.script(ScriptStage.POST_INSTALL)
    assert post is not None and post.path == ws.hook and post.text == ws.hook.read_bytes()
    pre = p.script(ScriptStage.PRE_CACHE)
    assert pre is not None and pre.path is None
    assert pre.text == b"echo building alpha for amd64\n"
    assert p.var("codename") == "alpha" and p.var("mirrors.main") == MIRROR
    assert p.var("suite_name") == "alpha-plain"
    assert len(p.digest) == 64
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.packages = ()  # type: ignore[misc]


def test_filters_and_extends(ws: Workspace) -> None:
    p = plan(ws, "testdist-2-aarch64-default")
    assert p.target_arch == "arm64"
    assert p.packages == ("iproute2", "only-on-2", "only-on-arm", "openssh-server", "procps")
    assert [r.name for r in p.repositories] == ["main", "extra"]
    assert p.repositories[1].suite == "beta-extra"
    assert p.var("point") == "7"


def test_short_names(ws: Workspace) -> None:
    assert parse_cache_name("debian-12") == ("debian", "12", host_arch(), "minimal")
    assert parse_cache_name("debian-12-aarch64-default") == ("debian", "12", "aarch64",
                                                             "default")
    if host_arch() in ("x86_64", "aarch64"):
        assert plan(ws, "testdist-1").name == f"testdist-1-{host_arch()}-minimal"
        assert plan(ws, "testdist-1-default").name == f"testdist-1-{host_arch()}-default"
    assert plan(ws, "testdist-2-aarch64").name == "testdist-2-aarch64-minimal"


def test_all_plan_names_and_list(ws: Workspace) -> None:
    names = all_plan_names(ws.settings)
    assert len(names) == 8
    assert "testdist-2-aarch64-default" in names
    (info,) = list_templates(ws.settings)
    assert (info.distribution, info.backend, info.releases, info.architectures, info.sets) == (
        "testdist", "debootstrap", ("1", "2"), ("x86_64", "aarch64"), ("minimal", "default"))
    assert info.error is None
    ws.write("schema: 1\n", "brokendist.yaml")
    broken = [i for i in list_templates(ws.settings) if i.distribution == "brokendist"]
    assert broken[0].error and "missing required key" in broken[0].error
    assert len(all_plan_names(ws.settings)) == 8     # the broken one is skipped


def test_same_inputs_same_digest(ws: Workspace, tmp_path: Path) -> None:
    a = plan(ws)
    b = plan(ws)
    assert a == b and a.digest == b.digest
    # the same template in another checkout: script paths differ, digest does not
    other = tmp_path / "elsewhere"
    shutil.copytree(ws.root, other)
    moved = make_plan("testdist-1-x86_64-minimal",
                      Settings(workspace=other, cache_dir=other / "caches",
                               template_dirs=(other / "metadata",),
                               hook_dirs=(other / "hooks",)), env={})
    assert moved.template_file != a.template_file
    assert moved.digest == a.digest


CHANGES = {
    "package": ("      - procps\n", "      - procps\n      - htop\n"),
    "package-removed": ("      - procps\n", ""),
    "repository-suite": ('suite: "{{ codename }}"', 'suite: "{{ codename }}-next"'),
    "repository-component": ("components: [main]", "components: [main, contrib]"),
    "mirror": ("http://mirror.invalid/debian", "http://other.invalid/debian"),
    "inline-script": ("echo building", "echo Building"),
    "option-compression": ("compression: zstd", "compression: xz"),
    "option-trim": ("trim_docs: true", "trim_docs: false"),
    "variable": ("flavour: plain", "flavour: fancy"),
    "key": (f"{{file: keys/k.asc, fingerprint: {KEY_FPR}}}",
            f"{{file: keys/other.asc, fingerprint: {OTHER_KEY_FPR}}}"),
}


@pytest.mark.parametrize("what", sorted(CHANGES))
def test_any_input_change_changes_digest(ws: Workspace, what: str) -> None:
    before = plan(ws).digest
    ws.replace(*CHANGES[what])
    assert plan(ws).digest != before


def test_hook_byte_changes_digest(ws: Workspace) -> None:
    before = plan(ws).digest
    ws.hook.write_text(ws.hook.read_text() + "\n")
    assert plan(ws).digest != before


def test_mirror_overrides_precedence(ws: Workspace) -> None:
    files = dataclasses.replace(ws.settings,
                                config={"mirrors": {"main": "http://file.invalid/d"}})
    env = {"VZPKG_MIRROR_MAIN": "http://env.invalid/d/"}
    assert plan(ws).repositories[0].url == MIRROR
    assert make_plan("testdist-1-x86_64-minimal", files, env={}).repositories[0].url == \
        "http://file.invalid/d"
    assert make_plan("testdist-1-x86_64-minimal", files, env=env).repositories[0].url == \
        "http://env.invalid/d"
    top = make_plan("testdist-1-x86_64-minimal", files, env=env,
                    overrides={"mirrors.main": "http://set.invalid/d"})
    assert top.repositories[0].url == "http://set.invalid/d"
    assert top.var("mirrors.main") == "http://set.invalid/d"
    # environment names for mirrors a template does not have are ignored
    assert plan(ws, env={"VZPKG_MIRROR_OTHER": "x"}).repositories[0].url == MIRROR


def test_variable_overrides(ws: Workspace) -> None:
    assert plan(ws, overrides={"flavour": "spicy"}).var("suite_name") == "alpha-spicy"
    assert plan(ws, overrides={"variables.flavour": "hot"}).var("flavour") == "hot"
    assert plan(ws, env={"VZPKG_SET_FLAVOUR": "mild"}).var("suite_name") == "alpha-mild"
    assert plan(ws, env={"VZPKG_SET_FLAVOUR": "mild"},
                overrides={"flavour": "spicy"}).var("flavour") == "spicy"


def test_option_overrides(ws: Workspace) -> None:
    p = plan(ws, overrides={"options.compression": "gzip", "options.weak_deps": "yes",
                            "options.variant": "buildd"})
    assert p.options.compression is Compression.GZIP
    assert p.options.weak_deps and p.options.variant == "buildd"


def test_backend_override(ws: Workspace) -> None:
    p = plan(ws, backend="mmdebstrap")
    assert p.backend == "mmdebstrap"
    assert p.digest != plan(ws).digest


def test_set_level_options_and_scripts(ws: Workspace) -> None:
    ws.replace("    packages: [openssh-server]\n",
               "    packages: [openssh-server]\n    options: {compression: xz}\n"
               "    scripts: {post-cache: echo done}\n")
    d = plan(ws, "testdist-1-x86_64-default")
    assert d.options.compression is Compression.XZ
    post_cache = d.script(ScriptStage.POST_CACHE)
    assert post_cache is not None and post_cache.text == b"echo done"
    m = plan(ws)
    assert m.options.compression is Compression.ZSTD
    assert m.script(ScriptStage.POST_CACHE) is None


def test_workspace_template_overrides_shipped(ws: Workspace) -> None:
    text = ws.template.read_text().replace("testdist", "debian")
    ws.write(text, "debian.yaml")
    settings = dataclasses.replace(
        ws.settings, template_dirs=(*ws.settings.template_dirs,
                                    *Settings(None, Path("/")).template_dirs))
    p = make_plan("debian-1-x86_64-minimal", settings, env={})
    assert p.template_file == ws.root / "metadata" / "debian.yaml"
    names = {i.distribution: i.file for i in list_templates(settings)}
    assert names["debian"] == ws.root / "metadata" / "debian.yaml"
    assert "fedora" in names          # shipped templates are still there


def test_yaml_anchors_and_int_keys(ws: Workspace) -> None:
    ws.replace('  "1": {codename: alpha}', "  1: {codename: alpha}")
    ws.replace("    packages: [openssh-server]", "    packages: [openssh-server, *base]")
    ws.replace("      - procps\n", "      - &base procps\n")
    p = plan(ws, "testdist-1-x86_64-default")
    assert p.release == "1" and "procps" in p.packages
