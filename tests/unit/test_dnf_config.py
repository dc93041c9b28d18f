"""The dnf configuration and command line a plan renders to, for the shipped
Fedora / AlmaLinux / Rocky templates (their mirrors are not reachable from
here, so no dnf runs) and for the tests' own distribution."""

from __future__ import annotations

import configparser
import dataclasses
from pathlib import Path

import pytest
import yaml

from tests.rpm_helpers import make_context
from vzpkg.build.backends import get_backend
from vzpkg.build.backends.dnf import Dnf, diagnose
from vzpkg.build.backends.rpm_config import DnfSettings, default_rpmdb, dnf_argv, repo_signed
from vzpkg.build.buildve import BuildLog
from vzpkg.core.errors import TemplateError
from vzpkg.core.settings import SHIPPED_METADATA, load_settings
from vzpkg.template.loader import make_plan
from vzpkg.template.model import Plan


def _plan(name: str, tmp: Path) -> Plan:
    empty = tmp / "ws"
    empty.mkdir(exist_ok=True)
    return make_plan(name, load_settings(workspace=empty, cache_dir=tmp / "caches"))


def _backend(plan: Plan, tmp: Path, *, offline: bool = False) -> Dnf:
    (tmp / "work").mkdir(parents=True, exist_ok=True)
    ctx = make_context(plan, pkg_cache=tmp / "pkgcache", work=tmp / "work",
                       keyring=tmp / "keyring.gpg", log=BuildLog(tmp / "build.log"),
                       offline=offline)
    backend = get_backend("dnf")(ctx)
    assert isinstance(backend, Dnf)
    return backend


def _conf(backend: Dnf) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(interpolation=None)
    cp.read_string(backend.prepare().read_text())
    return cp


def _argv(backend: Dnf, root: Path, *, host_arch: str = "x86_64") -> list[str]:
    return dnf_argv(backend.settings, conf=backend.private / "dnf.conf", root=root,
                    private=backend.private, offline=backend.ctx.offline,
                    host_arch=host_arch)


def test_fedora_renders_metalinks_pinned_key_and_sysimage_rpmdb(tmp_path: Path) -> None:
    plan = _plan("fedora-42-x86_64-minimal", tmp_path)
    b = _backend(plan, tmp_path)
    cp = _conf(b)
    assert cp.sections() == ["main", "fedora", "updates"]
    main = cp["main"]
    assert main["gpgcheck"] == "1"
    assert main["install_weak_deps"] == "0"
    assert main["keepcache"] == "1"
    assert main["skip_if_unavailable"] == "0"
    assert main["metadata_expire"] == "-1"      # staleness is decided by repo_state
    assert main["tsflags"] == ""
    assert main["cachedir"] == "/var/cache/dnf"
    fedora = cp["fedora"]
    assert fedora["metalink"] == ("https://mirrors.fedoraproject.org/metalink?"
                                  "repo=fedora-42&arch=x86_64")
    assert "baseurl" not in fedora
    assert cp["updates"]["metalink"].endswith("repo=updates-released-f42&arch=x86_64")
    for repo in ("fedora", "updates"):
        assert cp[repo]["gpgcheck"] == "1"
        # Fedora does not sign repomd.xml; dnf checks it against the metalink
        assert cp[repo]["repo_gpgcheck"] == "0"
        keys = cp[repo]["gpgkey"].split()
        assert len(keys) == 1 and keys[0].startswith("file:///")
        key = Path(keys[0].removeprefix("file://"))
        assert "B0F4950458F69E1150C6C5EDC8AC4916105EF944" in key.name
        assert key.read_text() == plan.keys[0].armored
    assert (b.home / ".rpmmacros").read_text() == "%_dbpath /usr/lib/sysimage/rpm\n"
    argv = _argv(b, tmp_path / "root")
    assert "--releasever=42" in argv
    assert f"--installroot={tmp_path / 'root'}" in argv
    assert f"--config={b.private / 'dnf.conf'}" in argv
    assert f"--setopt=reposdir={b.private / 'repos.d'}" in argv
    assert f"--setopt=varsdir={b.private / 'vars'}" in argv
    assert "--noplugins" in argv
    assert not any(a.startswith("--forcearch") or a == "--cacheonly" for a in argv)
    assert not any("/etc/yum.repos.d" in a or "/etc/dnf" in a for a in argv)


@pytest.mark.parametrize(("dist", "repos", "key"), [
    ("almalinux", {"baseos": "https://mirrors.almalinux.org/mirrorlist/9/baseos",
                   "appstream": "https://mirrors.almalinux.org/mirrorlist/9/appstream"},
     "BF18AC2876178908D6E71267D36CB86CB86B3716"),
    ("rocky", {"baseos": "https://mirrors.rockylinux.org/mirrorlist?arch=x86_64&repo=BaseOS-9",
               "appstream": "https://mirrors.rockylinux.org/mirrorlist?arch=x86_64"
                            "&repo=AppStream-9"},
     "21CB256AE16FC54C6E652949702D426D350D275D"),
])
def test_el9_renders_mirrorlists_and_var_lib_rpm(tmp_path: Path, dist: str,
                                                  repos: dict[str, str], key: str) -> None:
    b = _backend(_plan(f"{dist}-9-x86_64-minimal", tmp_path), tmp_path)
    cp = _conf(b)
    assert cp.sections() == ["main", *repos]
    for name, url in repos.items():
        assert cp[name]["mirrorlist"] == url
        assert cp[name]["gpgcheck"] == "1"
        assert key in cp[name]["gpgkey"]
    assert (b.home / ".rpmmacros").read_text() == "%_dbpath /var/lib/rpm\n"
    assert "--releasever=9" in _argv(b, tmp_path / "root")


def test_foreign_arch_and_offline_flags(tmp_path: Path) -> None:
    plan = _plan("fedora-43-aarch64-minimal", tmp_path)
    b = _backend(plan, tmp_path, offline=True)
    cp = _conf(b)
    assert cp["fedora"]["metalink"].endswith("repo=fedora-43&arch=aarch64")
    assert cp["main"]["metadata_expire"] == "-1"
    argv = _argv(b, tmp_path / "root")
    assert "--forcearch=aarch64" in argv
    assert "--cacheonly" in argv
    assert "--releasever=43" in argv


def test_every_shipped_dnf_template_checks_every_package(tmp_path: Path) -> None:
    dnf = 0
    for path in sorted(SHIPPED_METADATA.glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        if data["backend"] != "dnf":
            continue
        dist = path.stem
        for release in data["releases"]:
            plan = _plan(f"{dist}-{release}-x86_64-minimal", tmp_path)
            dnf += 1
            cp = _conf(_backend(plan, tmp_path / plan.name))
            assert cp["main"]["gpgcheck"] == "1", plan.name
            assert len(cp.sections()) > 1, plan.name
            for section in cp.sections()[1:]:
                assert cp[section]["gpgcheck"] == "1", (plan.name, section)
                keys = cp[section]["gpgkey"].split()
                assert len(keys) == len(plan.keys) >= 1, (plan.name, section)
    assert dnf >= 4          # fedora 42 and 43, almalinux 9, rocky 9


def test_options_and_variables(tmp_path: Path) -> None:
    base = _plan("fedora-42-x86_64-minimal", tmp_path)
    plan = dataclasses.replace(
        base, options=dataclasses.replace(base.options, weak_deps=True, trim_docs=True),
        variables=(*base.variables, ("repo_gpgcheck", "1"), ("releasever", "rawhide"),
                   ("module_platform_id", "platform:f42")))
    b = _backend(plan, tmp_path)
    cp = _conf(b)
    assert cp["main"]["install_weak_deps"] == "1"
    assert cp["main"]["tsflags"] == "nodocs"
    assert cp["main"]["module_platform_id"] == "platform:f42"
    assert cp["fedora"]["repo_gpgcheck"] == "1"
    assert "--releasever=rawhide" in _argv(b, tmp_path / "root")


@pytest.mark.parametrize(("var", "value", "key"), [
    ("rpmdb_path", "var/lib/rpm", "variables.rpmdb_path"),
    ("rpmdb_path", "/var/../etc", "variables.rpmdb_path"),
    ("repo_gpgcheck", "maybe", "variables.repo_gpgcheck"),
])
def test_bad_variables_name_the_field(tmp_path: Path, var: str, value: str,
                                      key: str) -> None:
    base = _plan("rocky-9-x86_64-minimal", tmp_path)
    plan = dataclasses.replace(base, variables=(*base.variables, (var, value)))
    with pytest.raises(TemplateError) as ei:
        DnfSettings.from_plan(plan)
    assert key in str(ei.value)
    assert str(plan.template_file) in str(ei.value)
    assert ei.value.hint


def test_defaults_tables() -> None:
    assert default_rpmdb("fedora", "42") == "/usr/lib/sysimage/rpm"
    assert default_rpmdb("fedora", "35") == "/var/lib/rpm"
    assert default_rpmdb("almalinux", "9") == "/var/lib/rpm"
    assert default_rpmdb("almalinux", "10") == "/usr/lib/sysimage/rpm"
    assert default_rpmdb("vztest", "1") == "/var/lib/rpm"


def test_plain_http_repositories_need_signed_metadata(tmp_path: Path) -> None:
    base = _plan("rocky-9-x86_64-minimal", tmp_path)
    settings = DnfSettings.from_plan(base)
    http_list = dataclasses.replace(base.repositories[0],
                                    mirrorlist="http://example.invalid/list")
    baseurl = dataclasses.replace(base.repositories[0], mirrorlist=None,
                                  url="https://example.invalid/9/BaseOS/x86_64/os/")
    assert repo_signed(settings, base.repositories[0]) is False
    assert repo_signed(settings, http_list) is True
    assert repo_signed(settings, baseurl) is True


def test_no_pinned_key_is_refused(tmp_path: Path) -> None:
    plan = dataclasses.replace(_plan("rocky-9-x86_64-minimal", tmp_path), keys=())
    with pytest.raises(TemplateError, match="no pinned key"):
        _backend(plan, tmp_path).prepare()


@pytest.mark.parametrize(("output", "expect"), [
    ("Package vztest-b-1.0-1.noarch.rpm is not signed\nError: GPG check FAILED",
     "package vztest-b-1.0-1.noarch.rpm is not signed"),
    ("The GPG keys listed for the \"x\" repository are already installed but they are "
     "not correct for this package.\nCheck that the correct key URLs are configured for "
     "this repository.. Failing package is: vztest-b-1.0-1.noarch",
     "vztest-b-1.0-1.noarch is signed by a key the template does not pin"),
    ("[MIRROR] vztest-b-1.0-1.noarch.rpm: Downloading successful, but checksum doesn't "
     "match. Calculated: 1(sha256)  Expected: 2(sha256)",
     "vztest-b-1.0-1.noarch.rpm does not match the checksum"),
    (" Problem: package vztest-b-1.0-1.noarch requires vztest-c, but none of the "
     "providers can be installed\n  - nothing provides vztest-c needed by "
     "vztest-b-1.0-1.noarch from vztest",
     "nothing provides vztest-c needed by vztest-b-1.0-1.noarch"),
    ("No match for argument: vztest-nosuch", "no package vztest-nosuch"),
])
def test_diagnose_dnf_failures(output: str, expect: str) -> None:
    found = diagnose(output)
    assert found is not None
    assert expect in found[0]
    assert found[1]
