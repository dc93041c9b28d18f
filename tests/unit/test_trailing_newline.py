"""A value with a line break in it is refused like any other bad value.

Python's ``$`` also matches just before a final "\\n", so a validator written as
``re.match(r"^...$", value)`` took ``"value\\n"``; and a few checks that are not
regular expressions (ipaddress's IPv6 scope, urlsplit, the CTID.conf writer) let
a line break through as well.  Each test feeds "good value\\n" (accepted before:
every test here fails on the code before this change) and, where it makes sense,
"good\\nvalue" through the public function or command a user reaches, and expects
the error that field gives for any other bad value.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from tests.cgroups_helpers import v2_tree
from tests.metadata_helpers import KEY_FPR, MIRROR, Workspace, make_workspace
from tests.store_helpers import make_manifest
from vzpkg.cli import vzubc
from vzpkg.cli.vzpkg import main as vzpkg_main
from vzpkg.core.errors import (
    ConfigError,
    GpgError,
    MirrorError,
    StoreError,
    TemplateError,
    UsageError,
    VeError,
)
from vzpkg.core.pgpkeys import normalize_fingerprint
from vzpkg.core.settings import Settings
from vzpkg.mirror import Index, MirrorConfig, mirror_config
from vzpkg.runtime.cgroups import check_ctid as cgroup_ctid
from vzpkg.runtime.config import VeConfig
from vzpkg.runtime.params import (
    ParamError,
    add_set_options,
    check_hostname,
    check_name,
    options_to_values,
)
from vzpkg.runtime.paths import VzPaths, check_ctid
from vzpkg.store.manifest import Manifest, expand_name, parse_name
from vzpkg.template.loader import make_plan, validate_file

NAME = "debian-12-x86_64-minimal"


def broken(good: str) -> list[str]:
    """*good* with a trailing newline (what "^...$" let through: each test fails on
    the old code with it), and with one in the middle (refused before too)."""
    mid = len(good) // 2
    return [good + "\n", good[:mid] + "\n" + good[mid:]]


# -- fingerprints ---------------------------------------------------------------------

def test_fingerprint() -> None:
    assert normalize_fingerprint(KEY_FPR.lower()) == KEY_FPR
    for fpr in broken(KEY_FPR):
        with pytest.raises(GpgError, match="is not 40 hexadecimal digits"):
            normalize_fingerprint(fpr)


def test_trusted_key_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``vzpkg verify --trusted-key FILE:FINGERPRINT``."""
    key = tmp_path / "k.asc"
    key.write_text("any file: the fingerprint is checked before the key is read\n")
    for fpr in broken(KEY_FPR):
        rc = vzpkg_main(["--cache-dir", str(tmp_path / "c"), "verify",
                         "--trusted-key", f"{key}:{fpr}", NAME])
        err = capsys.readouterr().err
        assert rc == 2, err
        assert "--trusted-key" in err and "is not 40 hexadecimal digits" in err
        assert "Traceback" not in err


def _settings(tmp_path: Path, pull: dict[str, Any]) -> Settings:
    cfg = tmp_path / "vzpkg.yaml"
    cfg.write_text("# test\n")
    return Settings(workspace=tmp_path, cache_dir=tmp_path / "caches", config_files=(cfg,),
                    config={"pull": pull})


def test_pulls_trusted_key(tmp_path: Path) -> None:
    """``pull: {trusted_keys: [{file, fingerprint}]}`` in vzpkg.yaml."""
    for fpr in broken(KEY_FPR):
        s = _settings(tmp_path, {"trusted_keys": [{"file": "k.asc", "fingerprint": fpr}]})
        with pytest.raises(ConfigError, match=r"trusted_keys\[0\]\.fingerprint: .* is not "
                                              "40 hexadecimal digits"):
            mirror_config(s, root=tmp_path)


# -- cache names and manifests ----------------------------------------------------------

def test_cache_name() -> None:
    assert parse_name(NAME).release == "12"
    for name in broken(NAME):
        with pytest.raises(StoreError, match="is not a valid cache name"):
            parse_name(name)
    for short in broken("debian-12"):
        with pytest.raises(StoreError, match="is not a valid cache name"):
            expand_name(short)


@pytest.mark.parametrize("good", [NAME, "debian-12"])
def test_cache_name_on_the_command_line(tmp_path: Path, good: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """``vzpkg verify NAME`` (every command that takes a cache name uses the check)."""
    for name in broken(good):
        rc = vzpkg_main(["--cache-dir", str(tmp_path), "verify", name])
        err = capsys.readouterr().err
        assert rc != 0 and "is not a valid cache name" in err, err
        assert "no cache named" not in err and "Traceback" not in err


@pytest.mark.parametrize(("key", "needle"), [
    ("sha256", "is not 64 lowercase hexadecimal digits"),
    ("plan_digest", "is not 64 lowercase hexadecimal digits"),
    ("name", "is not a valid cache name"),
])
def test_manifest_field(key: str, needle: str) -> None:
    d = make_manifest(NAME).to_json()
    Manifest.from_json(d, source="m.json")
    for bad in broken(d[key]):
        with pytest.raises(StoreError, match=needle):
            Manifest.from_json({**d, key: bad}, source="m.json")


# -- a mirror's index and URL -----------------------------------------------------------

def _entry(**over: Any) -> dict[str, Any]:
    e: dict[str, Any] = {
        "name": NAME, "distribution": "debian", "release": "12", "arch": "x86_64",
        "set": "minimal", "serial": 2, "size": 10, "sha256": "a" * 64,
        "compression": "zstd", "tarball": "caches/d/2/d.tar.zst",
        "manifest": "caches/d/2/d.manifest.json", "manifest_sha256": "b" * 64,
        "signature": "caches/d/2/d.tar.zst.asc", "packages": 3, "created": ""}
    return {**e, **over}


@pytest.mark.parametrize(("key", "needle"), [
    ("name", "is not a cache name"), ("sha256", "field 'sha256'"),
    ("manifest_sha256", "field 'manifest_sha256'"), ("tarball", "unsafe segment"),
    ("signature", "unsafe segment"),
])
def test_index_entry(key: str, needle: str) -> None:
    def index(entry: dict[str, Any]) -> Index:
        data = json.dumps({"format": 1, "generated": "", "caches": [entry]}).encode()
        return Index.from_bytes(data, source="index.json")

    index(_entry())
    for bad in broken(_entry()[key]):
        with pytest.raises(MirrorError, match=needle):
            index(_entry(**{key: bad}))


def test_mirror_url(tmp_path: Path) -> None:
    """``vzpkg pull --mirror URL`` and ``pull: {mirrors: [URL]}`` in vzpkg.yaml."""
    good = "http://m.test/vz"
    assert MirrorConfig().with_mirrors((good,)).mirrors == (good + "/",)
    for url in broken(good):
        with pytest.raises(ConfigError, match=r"--mirror: mirror .* is not an http"):
            MirrorConfig().with_mirrors((url,))
        with pytest.raises(ConfigError, match=r"pull\.mirrors\[0\]: mirror .* is not an http"):
            mirror_config(_settings(tmp_path, {"mirrors": [url]}), root=tmp_path)


# -- VE ids, names and parameters -------------------------------------------------------

def test_ctid() -> None:
    assert check_ctid("101") == 101 and cgroup_ctid("101") == "101"
    for ctid in broken("101"):
        with pytest.raises(UsageError, match="invalid CTID"):
            check_ctid(ctid)
        with pytest.raises(VeError, match="is not a valid CTID"):
            cgroup_ctid(ctid)


def test_vzubc_ctid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                    capsys: pytest.CaptureFixture[str]) -> None:
    vz = tmp_path / "vz"
    monkeypatch.setenv("VZ_ROOT", str(vz))
    v2_tree(tmp_path / "cgroup", "101", prefix=VzPaths(vz).cgroup_prefix)   # 101 runs
    assert vzubc.main(["--cgroup-root", str(tmp_path / "cgroup"), "101\n"]) == 1
    err = capsys.readouterr().err
    assert "'101\\n' is not a valid CTID" in err and "Traceback" not in err


def test_a_conf_file_named_with_a_newline_is_no_ve(tmp_path: Path) -> None:
    """The VEs that vzctl boot, the event helper and the address checks go through."""
    paths = VzPaths(tmp_path)
    paths.conf_dir.mkdir(parents=True)
    (paths.conf_dir / "101.conf").write_text('HOSTNAME="a"\n')
    (paths.conf_dir / "102\n.conf").write_text('HOSTNAME="b"\n')
    assert paths.ctids() == [101]


@pytest.mark.parametrize(("check", "good", "needle"), [
    (check_hostname, "web.example.com", "is not a valid host name"),
    (check_name, "web1", "is not a valid VE name"),
])
def test_hostname_and_name(check: Any, good: str, needle: str) -> None:
    assert check(good) == good
    for bad in broken(good):
        with pytest.raises(ParamError, match=needle):
            check(bad)


def _set(*argv: str) -> dict[str, str]:
    """What `vzctl set CTID ARGV` would save (the options of vzctl set)."""
    p = argparse.ArgumentParser()
    add_set_options(p)
    return options_to_values(p.parse_args(list(argv)))


@pytest.mark.parametrize(("option", "good", "bads"), [
    ("--ram", "512M", ["512M\n", "512\nM"]),
    ("--physpages", "0:512M", ["0:512M\n"]),
    ("--diskspace", "10G:11G", ["10G:11G\n"]),
    ("--cpuunits", "1000", ["1000\n"]),
    ("--cpulimit", "50%", ["50%\n"]),
    ("--onboot", "yes", ["yes\n"]),
    ("--cpumask", "0", ["0\n"]),
    ("--ipadd", "fe80::1%eth0", ["fe80::1%eth0\n", "fe80::1%et\nh0"]),
    ("--nameserver", "fe80::1%eth0", ["fe80::1%eth0\n", "fe80::1%et\nh0"]),
    ("--description", "a web server", ["a web\rserver", "a web server\r"]),
])
def test_vzctl_set_option(option: str, good: str, bads: list[str]) -> None:
    assert _set(option, good)
    for bad in bads:
        with pytest.raises(UsageError, match=f"^{option}: "):
            _set(option, bad)


@pytest.mark.parametrize("value", ["a\rb", "a\x0bb", "a\u2028b", "ab\r"])
def test_ctid_conf_value_stays_on_its_line(value: str) -> None:
    """Every break that the reader (str.splitlines) splits at, not only "\\n"."""
    with pytest.raises(ConfigError, match="DESCRIPTION: a value cannot contain a newline"):
        VeConfig.parse("").with_values({"DESCRIPTION": value})


# -- templates ----------------------------------------------------------------------

@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return make_workspace(tmp_path / "ws")


def _template_error(ws: Workspace, old: str, new: str) -> TemplateError:
    ws.replace(old, new)
    with pytest.raises(TemplateError) as info:
        validate_file(ws.template, ws.settings, env={}, apt_dir=ws.root / "no-apt")
    return info.value


def _yaml(text: str) -> str:
    """*text* as a double-quoted YAML scalar."""
    return '"' + text.replace("\n", "\\n") + '"'


@pytest.mark.parametrize(("line", "edited", "good", "key"), [
    ('  "1": {codename: alpha}', "  {}: {{codename: alpha}}", "1", "releases.{}"),
    ("architectures: [x86_64, aarch64]", "architectures: [x86_64, {}]", "aarch64",
     "architectures[1]"),
    ("  default:\n", "  {}:\n", "default", "sets.{}"),
    ("  flavour: plain", "  {}: plain", "flavour", "variables.{}"),
])
def test_template_names(tmp_path: Path, line: str, edited: str, good: str, key: str) -> None:
    """A release, an architecture, a set, a variable: the schema's name patterns."""
    for i, bad in enumerate(broken(good)):
        ws = make_workspace(tmp_path / str(i))
        err = _template_error(ws, line, edited.format(_yaml(bad)))
        assert "is not a valid name" in err.message, str(err)
        assert err.key == key.format(bad), str(err)


def test_template_fingerprint(tmp_path: Path) -> None:
    for i, fpr in enumerate(broken(KEY_FPR)):
        ws = make_workspace(tmp_path / str(i))
        err = _template_error(ws, f"fingerprint: {KEY_FPR}", f"fingerprint: {_yaml(fpr)}")
        assert err.key == "keys[0].fingerprint"
        assert "is not 40 hexadecimal digits" in err.message, str(err)


def test_template_url(tmp_path: Path) -> None:
    for i, url in enumerate(broken(MIRROR)):
        ws = make_workspace(tmp_path / str(i))
        err = _template_error(ws, f'main: "{MIRROR}"', f"main: {_yaml(url)}")
        assert err.key == "repositories[0].url"
        assert "is not a URL" in err.message, str(err)


def test_set_mirror_url(ws: Workspace) -> None:
    """``vzpkg build --set mirrors.main=URL``."""
    for url in broken(MIRROR):
        with pytest.raises(TemplateError, match="is not a URL"):
            make_plan("testdist-1-x86_64-minimal", ws.settings,
                      overrides={"mirrors.main": url}, env={}, apt_dir=ws.root / "no-apt")
