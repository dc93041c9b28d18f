"""Manifests: round trip, and every malformed field refused with file and field named."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.store_helpers import NAME, make_manifest
from vzpkg.core.errors import StoreError
from vzpkg.core.types import host_arch
from vzpkg.store.manifest import Manifest, expand_name, parse_name


def test_round_trip_is_identical() -> None:
    m = make_manifest(data=b"hello")
    text = m.dumps()
    again = Manifest.loads(text, source="x.manifest.json")
    assert again == m
    assert again.dumps() == text
    d = json.loads(text)
    assert list(d) == sorted(d)                    # sorted keys
    assert d["set"] == "minimal" and "set_name" not in d
    assert text.startswith('{\n  "arch"')          # indent 2


@pytest.mark.parametrize("name", [
    "debian-12-x86_64-minimal", "fedora-41-aarch64-default", "almalinux-9.4-x86_64-minimal",
    "my_dist-1.2.3-x86_64-my_set"])
def test_valid_names(name: str) -> None:
    assert str(parse_name(name)) == name


@pytest.mark.parametrize("name", [
    "debian-12", "debian-12-x86_64-minimal-old", "Debian-12-x86_64-minimal",
    "debian-12-x86_64-", "debian-12-x86 64-minimal", "debian-12-x86_64-../x",
    "debian-..-x86_64-minimal", "debian/12-x86_64-minimal-a", ""])
def test_invalid_names(name: str) -> None:
    with pytest.raises(StoreError) as ei:
        parse_name(name)
    assert ei.value.hint and "<distribution>-<release>-<arch>-<set>" in ei.value.hint


BAD: list[tuple[str, Any, str]] = [
    ("name", "Bad Name", "name"),
    ("name", None, "name"),
    ("distribution", "other", "distribution"),
    ("set", "default", "set"),
    ("serial", 0, "serial"),
    ("serial", "3", "serial"),
    ("serial", True, "serial"),
    ("size", -1, "size"),
    ("sha256", "abc", "sha256"),
    ("sha256", "A" * 64, "sha256"),
    ("compression", "bzip2", "compression"),
    ("tarball", "../../etc/passwd", "tarball"),
    ("tarball", NAME + ".tar.xz", "tarball"),
    ("signature", "/tmp/x.asc", "signature"),
    ("created", "yesterday", "created"),
    ("tools", {"vzpkg": 1}, "tools"),
    ("tools", [], "tools"),
    ("packages", {}, "packages"),
    ("packages", [{"name": "a", "version": "1"}], "packages[0]"),
    ("packages", [{"name": "a", "version": "1", "arch": ""}], "packages[0]"),
    ("plan_digest", "xyz", "plan_digest"),
    ("schema", 99, "schema"),
    ("surprise", 1, "surprise"),
]


@pytest.mark.parametrize(("key", "value", "field"), BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_malformed_field_is_refused(key: str, value: Any, field: str) -> None:
    d = make_manifest().to_json()
    if value is None:
        del d[key]
    else:
        d[key] = value
    with pytest.raises(StoreError) as ei:
        Manifest.from_json(d, source="caches/x.manifest.json")
    msg = str(ei.value)
    assert msg.startswith("caches/x.manifest.json: ")
    assert f"'{field}'" in msg
    assert ei.value.hint


@pytest.mark.parametrize("text", ["", "{", "[]", '"x"', "\xff"])
def test_not_json_object(text: str) -> None:
    with pytest.raises(StoreError, match=r"^m\.json: "):
        Manifest.loads(text, source="m.json")


def test_short_name_expands_to_host_arch_and_minimal() -> None:
    full = expand_name("debian-12")
    parts = parse_name(full)
    assert (parts.distribution, parts.release, parts.set_name) == ("debian", "12", "minimal")
    assert parts.arch == host_arch()
    assert expand_name("debian-12-aarch64-default") == "debian-12-aarch64-default"
    with pytest.raises(StoreError, match="not a valid cache name") as ei:
        expand_name("debian-12-x86_64")
    assert ei.value.hint and "short form" in ei.value.hint
