"""Mirror configuration and index parsing: strict, with messages that name the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vzpkg.core.errors import ConfigError, MirrorError
from vzpkg.core.settings import Settings
from vzpkg.mirror import Index, mirror_config
from vzpkg.mirror.index import safe_relpath

FPR = "0123456789ABCDEF0123456789ABCDEF01234567"


def settings(tmp_path: Path, config: dict[str, Any]) -> Settings:
    cfg = tmp_path / "vzpkg.yaml"
    cfg.write_text("# test\n")
    return Settings(workspace=tmp_path, cache_dir=tmp_path / "caches", config=config,
                    config_files=(cfg,))


def test_config_merges_vzpkg_yaml_and_vz_conf(tmp_path: Path) -> None:
    root = tmp_path / "vz"
    (root / "etc/vz").mkdir(parents=True)
    (root / "etc/vz/vz.conf").write_text(
        '# global\nVE_LAYOUT="plain"\n'
        'TEMPLATE_MIRRORS="http://b.test/vz http://a.test/vz/"\n'
        f'TEMPLATE_KEYS="keys/m.asc:{FPR.lower()}"\n')
    s = settings(tmp_path, {"pull": {
        "mirrors": ["http://a.test/vz"],
        "trusted_keys": [{"file": "k.asc", "fingerprint": " ".join([FPR[:20], FPR[20:]])}],
        "timeout": {"connect": 2, "read": 7.5}, "retries": 1},
        "signing": {"key": "ABC", "gnupghome": "gpg"}})
    cfg = mirror_config(s, root=root)
    assert cfg.mirrors == ("http://a.test/vz/", "http://b.test/vz/")
    assert [k.file for k in cfg.trusted_keys] == [tmp_path / "k.asc",
                                                  root / "etc/vz/keys/m.asc"]
    assert {k.fingerprint for k in cfg.trusted_keys} == {FPR}
    assert (cfg.connect_timeout, cfg.read_timeout, cfg.retries) == (2.0, 7.5, 1)
    assert cfg.signing_key == "ABC" and cfg.gnupghome == tmp_path / "gpg"


def test_config_defaults_without_any_file(tmp_path: Path) -> None:
    cfg = mirror_config(settings(tmp_path, {}), root=tmp_path / "none")
    assert cfg.mirrors == () and cfg.trusted_keys == ()
    assert cfg.connect_timeout > 0 and cfg.read_timeout > 0


@pytest.mark.parametrize(("pull", "needle"), [
    ({"mirrors": ["ftp://x.test/"]}, "pull.mirrors[0]"),
    ({"mirrors": "http://x.test/"}, "expected a list"),
    ({"trusted_keys": [{"file": "k.asc"}]}, "trusted_keys[0]"),
    ({"trusted_keys": [{"file": "k.asc", "fingerprint": "1234"}]},
     "pull.trusted_keys[0].fingerprint: fingerprint '1234' is not 40 hexadecimal"),
    ({"timeout": -1}, "pull.timeout"),
    ({"retries": "many"}, "pull.retries"),
    ({"mirror": []}, "unknown key(s) mirror"),
])
def test_config_errors_name_the_setting(tmp_path: Path, pull: dict[str, Any],
                                        needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        mirror_config(settings(tmp_path, {"pull": pull}), root=tmp_path)
    assert needle in str(exc.value)


def test_vz_conf_errors_name_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "etc/vz").mkdir(parents=True)
    conf = tmp_path / "etc/vz/vz.conf"
    conf.write_text('OK="1"\nthis is not a setting\n')
    with pytest.raises(ConfigError, match=r"vz\.conf:2: expected KEY="):
        mirror_config(settings(tmp_path, {}), root=tmp_path)
    conf.write_text('TEMPLATE_KEYS="nofingerprint"\n')
    with pytest.raises(ConfigError, match="FILE:FINGERPRINT"):
        mirror_config(settings(tmp_path, {}), root=tmp_path)
    conf.write_text('TEMPLATE_KEYS="k.asc:1234"\n')
    with pytest.raises(ConfigError, match=r"vz\.conf: TEMPLATE_KEYS 'k\.asc:1234': "
                                          "fingerprint '1234' is not 40"):
        mirror_config(settings(tmp_path, {}), root=tmp_path)


@pytest.mark.parametrize("path", [
    "caches/a/1/a.tar.zst", "index.json", "caches/debian-12-x86_64-minimal/3/x.tar.zst.asc"])
def test_safe_paths_pass(path: str) -> None:
    assert safe_relpath(path, where="t") == path


@pytest.mark.parametrize("path", [
    "../x", "caches/../../x", "/etc/passwd", "http://other.test/x", "//other.test/x",
    "caches\\..\\x", "caches/%2e%2e/x", "caches/./x", ".hidden", "x?y=1", "", "a//b/.."])
def test_escaping_paths_refused(path: str) -> None:
    with pytest.raises(MirrorError, match=r"outside the mirror|expected a relative"):
        safe_relpath(path, where="index.json: caches[0]: field 'tarball'")


def _entry(**over: Any) -> dict[str, Any]:
    e: dict[str, Any] = {
        "name": "debian-12-x86_64-minimal", "distribution": "debian", "release": "12",
        "arch": "x86_64", "set": "minimal", "serial": 2, "size": 10, "sha256": "a" * 64,
        "compression": "zstd", "tarball": "caches/d/2/d.tar.zst",
        "manifest": "caches/d/2/d.manifest.json", "manifest_sha256": "b" * 64,
        "signature": "caches/d/2/d.tar.zst.asc", "packages": 3, "created": ""}
    e.update(over)
    return e


def _index(*entries: dict[str, Any], fmt: int = 1) -> bytes:
    return json.dumps({"format": fmt, "generated": "", "caches": list(entries)}).encode()


def test_index_round_trip() -> None:
    idx = Index.from_bytes(_index(_entry()), source="index.json")
    again = Index.from_bytes(idx.to_bytes(), source="index.json")
    assert again == idx and idx.names() == ["debian-12-x86_64-minimal"]
    assert idx.get("debian-12-x86_64-minimal") is not None and idx.get("x") is None


@pytest.mark.parametrize(("data", "needle"), [
    (b"<html>not json</html>", "not a valid JSON index"),
    (_index(fmt=9), "unsupported index format 9"),
    (_index(_entry(), _entry()), "listed twice"),
    (_index(_entry(serial="2")), "caches[0]: field 'serial' must be an integer"),
    (_index(_entry(sha256="ABC")), "field 'sha256'"),
    (_index(_entry(name="../../etc")), "not a cache name"),
    (_index(_entry(tarball="../../../etc/shadow")), "caches[0]: field 'tarball'"),
    (_index(_entry(signature="https://evil.test/k.asc")), "field 'signature'"),
])
def test_bad_index_refused_with_field(data: bytes, needle: str) -> None:
    with pytest.raises(MirrorError) as exc:
        Index.from_bytes(data, source="http://m.test/index.json")
    assert needle in str(exc.value)
    assert "http://m.test/index.json" in str(exc.value)
