"""vzpkg export: OCI, LXC and Incus images of a cache, checked with the real tools
(skopeo and umoci for OCI, lxc-create for LXC; Incus is not packaged for Debian 12,
so its unified tarball is checked against the image format's documentation)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import assert_user_error, run_cli
from tests.runtime_helpers import BUSYBOX_NAME, make_busybox_cache
from vzpkg.store.cachestore import CacheStore

NAME = BUSYBOX_NAME


@pytest.fixture(scope="module")
def caches(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("export") / "caches"
    make_busybox_cache(d)
    return d


def export(caches: Path, dest: Path, fmt: str, *extra: str) -> dict[str, object]:
    r = run_cli("vzpkg", ["--cache-dir", caches, "export", NAME, "--format", fmt, dest,
                          "--json", *extra])
    assert r.returncode == 0, r.stderr
    out: dict[str, object] = json.loads(r.stdout)
    return out


def tool(*argv: str | Path) -> str:
    exe = shutil.which(str(argv[0]))
    if exe is None:
        pytest.fail(f"{argv[0]} is not installed (tools/install-system-deps installs it)")
    r = subprocess.run([exe, *map(str, argv[1:])], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, f"{argv}: {r.stderr}"
    return r.stdout


def members(tar: Path) -> dict[str, tarfile.TarInfo]:
    """Entries by path (no ./); a .tar.zst is read through zstd."""
    if tar.name.endswith(".zst"):
        plain = tar.with_name(tar.name + ".plain.tar")
        with plain.open("wb") as out:
            subprocess.run(["zstd", "-dcq", str(tar)], stdout=out, check=True)
        try:
            return members(plain)
        finally:
            plain.unlink()
    with tarfile.open(tar, "r:*") as t:
        return {m.name.removeprefix("./").rstrip("/").removeprefix("."): m
                for m in t.getmembers()}


def test_oci_layer_is_the_cache_and_the_digest_is_reproducible(caches: Path,
                                                               tmp_path: Path) -> None:
    m = CacheStore(caches).manifest(NAME)
    assert m is not None
    a = export(caches, tmp_path / "a", "oci")
    b = export(caches, tmp_path / "b", "oci")
    assert a["digest"] == b["digest"]
    assert (tmp_path / "a/index.json").read_bytes() == (tmp_path / "b/index.json").read_bytes()
    info = json.loads(tool("skopeo", "inspect", f"oci:{tmp_path / 'a'}"))
    assert info["Digest"] == a["digest"]
    assert info["Os"] == "linux" and info["Architecture"] == "amd64"
    # the layer is the cache's own bytes: its digest is the cache's sha256
    assert info["Layers"] == [f"sha256:{m.sha256}"]
    config = json.loads(tool("skopeo", "inspect", "--config", f"oci:{tmp_path / 'a'}"))
    assert config["config"]["Cmd"] == ["/bin/sh"]          # busybox tree: no /sbin/init
    # skopeo copies every blob and checks it against its digest
    tool("skopeo", "copy", f"oci:{tmp_path / 'a'}:{NAME}", f"dir:{tmp_path / 'copy'}")
    assert (tmp_path / "copy" / m.sha256).read_bytes() == (caches / m.tarball).read_bytes()


def test_oci_gzip_layer_unpacks_with_umoci(caches: Path, tmp_path: Path) -> None:
    a = export(caches, tmp_path / "a", "oci", "--oci-layer", "gzip", "--cmd", "/bin/sh -l")
    b = export(caches, tmp_path / "b", "oci", "--oci-layer", "gzip", "--cmd", "/bin/sh -l")
    assert a["digest"] == b["digest"]
    assert NAME in tool("umoci", "ls", "--layout", tmp_path / "a").split()
    tool("umoci", "unpack", "--image", f"{tmp_path / 'a'}:{NAME}", tmp_path / "bundle")
    root = tmp_path / "bundle" / "rootfs"
    assert (root / "bin/busybox").read_bytes() == Path("/bin/busybox").read_bytes()
    assert "ID=busybox" in (root / "etc/os-release").read_text()
    spec = json.loads((tmp_path / "bundle" / "config.json").read_text())
    assert spec["process"]["args"] == ["/bin/sh", "-l"]


def test_lxc_create_makes_a_container_from_the_export(caches: Path, tmp_path: Path) -> None:
    out = tmp_path / "lxc"
    export(caches, out, "lxc")
    lxcpath = tmp_path / "lxcpath"
    lxcpath.mkdir()
    tool("lxc-create", "-P", lxcpath, "-n", "ct1", "-t", "local", "--", "--metadata",
         out / "meta.tar.xz", "--fstree", out / "rootfs.tar.xz")
    rootfs = lxcpath / "ct1" / "rootfs"
    assert (rootfs / "etc/hostname").read_text() == "ct1\n"      # the hostname template
    assert (rootfs / "bin/busybox").read_bytes() == Path("/bin/busybox").read_bytes()
    config = (lxcpath / "ct1" / "config").read_text()
    assert "lxc.arch = x86_64" in config and "/usr/share/lxc/config/common.conf" in config
    again = tmp_path / "lxc2"
    export(caches, again, "lxc")
    for f in ("rootfs.tar.xz", "meta.tar.xz"):
        assert (out / f).read_bytes() == (again / f).read_bytes()


def test_incus_unified_tarball_follows_the_image_format(caches: Path, tmp_path: Path) -> None:
    m = CacheStore(caches).manifest(NAME)
    assert m is not None
    dest = tmp_path / "busybox.incus.tar.xz"
    r = export(caches, dest, "incus")
    assert r["digest"] == hashlib.sha256(dest.read_bytes()).hexdigest()
    got = members(dest)
    with tarfile.open(dest, "r:xz") as t:
        f = t.extractfile("metadata.yaml")
        assert f is not None
        meta = yaml.safe_load(f.read())
        tpl = t.extractfile("templates/hostname.tpl")
        assert tpl is not None and b"{{ instance.name }}" in tpl.read()
    assert meta["architecture"] == "x86_64" and isinstance(meta["creation_date"], int)
    assert meta["properties"]["os"] == "busybox" and meta["properties"]["release"] == "1"
    assert meta["templates"]["/etc/hostname"]["template"] == "hostname.tpl"
    # every entry of the cache is there under rootfs/, as it was
    cache = members(caches / m.tarball)
    for name, info in cache.items():
        e = got["rootfs/" + name if name else "rootfs"]
        assert (e.type, e.mode, e.uid, e.gid, e.size, e.linkname, e.mtime) == \
            (info.type, info.mode, info.uid, info.gid, info.size, info.linkname, info.mtime)
    assert set(got) == {"metadata.yaml", "templates", "templates/hostname.tpl", "rootfs",
                        *(f"rootfs/{n}" for n in cache if n)}
    again = tmp_path / "again.tar.xz"
    export(caches, again, "incus")
    assert again.read_bytes() == dest.read_bytes()


@pytest.mark.parametrize("fmt", ["oci", "lxc", "incus"])
def test_export_never_replaces_an_existing_destination(caches: Path, tmp_path: Path,
                                                      fmt: str) -> None:
    dest = tmp_path / "taken"
    dest.mkdir()
    (dest / "mine").write_text("keep me\n")
    r = run_cli("vzpkg", ["--cache-dir", caches, "export", NAME, "--format", fmt, dest])
    assert_user_error(r, str(dest), "already exists")
    assert [p.name for p in dest.iterdir()] == ["mine"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]     # no temporary left


def test_export_of_a_missing_cache_writes_nothing(caches: Path, tmp_path: Path) -> None:
    r = run_cli("vzpkg", ["--cache-dir", caches, "export", "nosuch-1-x86_64-minimal",
                          "--format", "oci", tmp_path / "out"])
    assert_user_error(r, "nosuch-1-x86_64-minimal")
    assert list(tmp_path.iterdir()) == []
    r = run_cli("vzpkg", ["--cache-dir", caches, "export", NAME, "--format", "oci",
                          tmp_path / "no" / "such" / "dir"])
    assert_user_error(r, "does not exist")


def test_export_of_a_damaged_cache_writes_nothing(tmp_path: Path, caches: Path) -> None:
    bad = tmp_path / "caches"
    shutil.copytree(caches, bad)
    m = CacheStore(bad).manifest(NAME)
    assert m is not None
    data = bytearray((bad / m.tarball).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / m.tarball).write_bytes(bytes(data))
    r = run_cli("vzpkg", ["--cache-dir", bad, "export", NAME, "--format", "incus",
                          tmp_path / "out.tar.xz"])
    assert_user_error(r, "does not match its manifest")
    assert not (tmp_path / "out.tar.xz").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["caches"]
