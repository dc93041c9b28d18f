"""Every bad mirror from issue 6 is refused, and the cache in place stays as it was.

Each test starts with an older cache already in the cache directory and a mirror
offering a newer one, breaks the mirror in one way, pulls, and checks the
refusal's message and that not one byte in the cache directory changed.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.mirror_helpers import (
    Keys,
    MirrorServer,
    config_for,
    dead_url,
    edit_index,
    make_cache,
    make_keys,
    publish_tree,
    sign_file,
    snapshot,
)
from vzpkg.cli.vzpkg import main
from vzpkg.mirror import MirrorConfig, Puller, PullReport
from vzpkg.mirror.verify import sqv_available
from vzpkg.store.cachestore import CacheStore

NAME = "test-1-x86_64-minimal"
TAR = f"caches/{NAME}/2/{NAME}.tar.zst"
SIZE = 2 << 20


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    k = make_keys(tmp_path_factory.mktemp("keys"))
    yield k
    k.close()


@dataclass
class World:
    keys: Keys
    tree: Path
    dst: Path
    srv: MirrorServer
    before: dict[str, str]

    def pull(self, cfg: MirrorConfig | None = None, *,
             use_sqv: bool | None = None) -> PullReport:
        with Puller(CacheStore(self.dst), cfg or config_for(self.keys, [self.srv.url]),
                    use_sqv=use_sqv) as p:
            return p.pull([NAME])

    def refused(self, *needles: str, cfg: MirrorConfig | None = None,
                use_sqv: bool | None = None) -> str:
        report = self.pull(cfg, use_sqv=use_sqv)
        assert not report.ok and report.pulled == ()
        why = report.failed[0][1]
        for n in needles:
            assert n in why, why
        assert snapshot(self.dst) == self.before, "the cache in place was changed"
        return why

    def partial(self) -> list[Path]:
        return list((self.dst / ".partial").glob("*.part"))


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Path:
    """Made once: a mirror tree offering serial 2 and a host cache dir with another cache."""
    base = tmp_path_factory.mktemp("world")
    make_cache(base / "src", NAME, 100_000, seed=1)
    make_cache(base / "src", NAME, SIZE, seed=2)      # serial 2 is on the mirror
    publish_tree(base / "src", base / "tree", keys)
    make_cache(base / "dst", NAME, 50_000, seed=3)    # what the host has now
    return base


@pytest.fixture
def world(tmp_path: Path, keys: Keys, template: Path) -> Iterator[World]:
    tree, dst = tmp_path / "tree", tmp_path / "dst"
    shutil.copytree(template / "tree", tree)
    shutil.copytree(template / "dst", dst)
    with MirrorServer(tree) as srv:
        yield World(keys, tree, dst, srv, snapshot(dst))


VERIFIERS = [pytest.param(False, id="gpg"),
             pytest.param(True, id="sqv", marks=pytest.mark.skipif(
                 not sqv_available(), reason="sqv is not installed"))]


@pytest.mark.parametrize("use_sqv", VERIFIERS)
def test_good_mirror_replaces_the_cache(world: World, use_sqv: bool) -> None:
    """The baseline the refusals below are measured against."""
    assert world.pull(use_sqv=use_sqv).ok
    assert snapshot(world.dst) != world.before


def test_tampered_tarball(world: World) -> None:
    tar = world.tree / TAR
    data = bytearray(tar.read_bytes())
    data[SIZE // 2] ^= 0xFF
    tar.write_bytes(bytes(data))
    world.refused("sha256", "differs from the signed index", "deleted")
    assert world.partial() == []


def test_truncated_file_on_the_mirror(world: World) -> None:
    tar = world.tree / TAR
    tar.write_bytes(tar.read_bytes()[:-1000])
    world.refused("the signed index says")
    assert world.partial() == []


def test_truncated_download(world: World) -> None:
    world.srv.bad.cut_after[TAR] = SIZE // 3
    why = world.refused("transfer cut after", cfg=config_for(world.keys, [world.srv.url],
                                                             retries=2))
    assert "of 2" in why
    assert len(world.srv.requested(TAR)) == 3               # first try + 2 resumes
    assert len(world.partial()) == 1                          # kept for the next pull


def test_wrong_sha256_in_signed_index(world: World) -> None:
    def wrong(doc: dict[str, Any]) -> None:
        doc["caches"][0]["sha256"] = "0" * 64
    edit_index(world.tree, wrong, world.keys)
    world.refused("the signed index says", "refused")     # the manifest disagrees first
    assert world.partial() == []


def test_wrong_sha256_in_index_and_manifest(world: World) -> None:
    """Even a publisher whose index and manifest agree cannot pass wrong bytes."""
    entry = json.loads((world.tree / "index.json").read_text())["caches"][0]
    manifest = world.tree / entry["manifest"]
    m = json.loads(manifest.read_text())
    m["sha256"] = "0" * 64
    manifest.write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")

    def wrong(doc: dict[str, Any]) -> None:
        import hashlib
        doc["caches"][0]["sha256"] = "0" * 64
        doc["caches"][0]["manifest_sha256"] = hashlib.sha256(manifest.read_bytes()).hexdigest()
    edit_index(world.tree, wrong, world.keys)
    world.refused(f"{TAR}: sha256", "differs from the signed index", "deleted")
    assert world.partial() == []


def test_unsigned_index(world: World) -> None:
    (world.tree / "index.json.asc").unlink()
    world.refused("the index is not signed", "HTTP 404")
    assert world.srv.requested(TAR) == []


@pytest.mark.parametrize("use_sqv", VERIFIERS)
def test_index_signed_by_untrusted_key(world: World, use_sqv: bool) -> None:
    sign_file(world.tree / "index.json", world.keys.other_home, world.keys.other_fpr)
    world.refused(world.keys.other_fpr[-16:], "not a trusted key", world.keys.fpr,
                  "index was refused", use_sqv=use_sqv)
    assert world.srv.requested(TAR) == []


@pytest.mark.parametrize("use_sqv", VERIFIERS)
def test_index_changed_after_signing(world: World, use_sqv: bool) -> None:
    index = world.tree / "index.json"
    index.write_text(index.read_text().replace('"serial": 2', '"serial": 7'))
    world.refused("bad signature: the signed file was altered", "index was refused",
                  use_sqv=use_sqv)


@pytest.mark.parametrize("use_sqv", VERIFIERS)
def test_tarball_signed_by_untrusted_key(world: World, use_sqv: bool) -> None:
    sign_file(world.tree / TAR, world.keys.other_home, world.keys.other_fpr)
    world.refused("not a trusted key", "deleted", use_sqv=use_sqv)
    assert world.partial() == []


def test_altered_manifest(world: World) -> None:
    entry = json.loads((world.tree / "index.json").read_text())["caches"][0]
    manifest = world.tree / entry["manifest"]
    manifest.write_text(manifest.read_text().replace('"base-files"', '"evil-files"'))
    world.refused("manifest.json: sha256 differs from the signed index")


@pytest.mark.parametrize(("field", "path"), [
    *(("tarball", p) for p in ("../../../etc/passwd", "/etc/passwd",
                               "http://127.0.0.2/evil.tar.zst", "//127.0.0.2/evil.tar.zst",
                               "caches/%2e%2e/%2e%2e/x.tar.zst")),
    ("signature", "../index.json.asc"), ("manifest", "https://127.0.0.2/m.json")])
def test_index_path_outside_the_mirror(world: World, field: str, path: str) -> None:
    def escape(doc: dict[str, Any]) -> None:
        doc["caches"][0][field] = path
    edit_index(world.tree, escape, world.keys)
    world.refused(f"field {field!r}", "outside the mirror")
    assert [p for p, _ in world.srv.log] == ["index.json", "index.json.asc"]


def test_mirror_down(world: World) -> None:
    world.refused("cannot connect", cfg=config_for(world.keys, [dead_url()]))
    report = world.pull(config_for(world.keys, [dead_url(), world.srv.url]))
    assert report.ok and report.pulled[0].mirror == world.srv.url


@pytest.mark.parametrize(("path", "status"), [
    ("index.json", 500), ("index.json", 404), (TAR, 500), (TAR, 403),
    (f"{TAR}.asc", 502), (f"caches/{NAME}/2/{NAME}.manifest.json", 404)])
def test_http_errors(world: World, path: str, status: int) -> None:
    world.srv.bad.status[path] = status
    world.refused(f"{path}: HTTP {status}")
    assert world.partial() == []


def test_http_error_then_next_mirror(world: World) -> None:
    with MirrorServer(world.tree) as broken:
        broken.bad.status[TAR] = 500
        report = world.pull(config_for(world.keys, [broken.url, world.srv.url]))
    assert report.ok and report.pulled[0].mirror == world.srv.url


@pytest.mark.parametrize("path", ["index.json", TAR])
def test_stalled_server_times_out(world: World, path: str) -> None:
    world.srv.bad.stall.add(path)
    t0 = time.monotonic()
    world.refused("timed out" if path == "index.json" else "transfer cut after",
                  cfg=config_for(world.keys, [world.srv.url], timeout=0.5, retries=1))
    assert time.monotonic() - t0 < 10          # not hanging (a regression would hang 60s)


def test_stalled_server_fails_over(world: World) -> None:
    with MirrorServer(world.tree) as stalled:
        stalled.bad.stall.add(TAR)
        report = world.pull(config_for(world.keys, [stalled.url, world.srv.url],
                                       timeout=0.5, retries=0))
    assert report.ok and report.pulled[0].mirror == world.srv.url


def test_untrusted_configuration_refused_before_any_request(world: World,
                                                            tmp_path: Path) -> None:
    from vzpkg.core.errors import ConfigError, GpgError
    with pytest.raises(ConfigError, match="no trusted keys configured"):
        world.pull(MirrorConfig(mirrors=(world.srv.url,)))
    bad_pin = MirrorConfig(mirrors=(world.srv.url,), trusted_keys=(
        config_for(world.keys, []).trusted_keys[0].__class__(world.keys.pub,
                                                            world.keys.other_fpr),))
    with pytest.raises(GpgError, match="does not match its pin"):
        world.pull(bad_pin)
    assert world.srv.log == []


def test_cli_reports_refusal_without_traceback(world: World, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    sign_file(world.tree / "index.json", world.keys.other_home, world.keys.other_fpr)
    ws = tmp_path / "ws"
    (ws / "metadata").mkdir(parents=True)
    (ws / "vzpkg.yaml").write_text(
        f"pull:\n  trusted_keys:\n    - {{file: {world.keys.pub}, "
        f"fingerprint: {world.keys.fpr}}}\n")
    monkeypatch.setenv("VZ_ROOT", str(tmp_path / "vz"))
    monkeypatch.setenv("VZPKG_CONFIG", str(tmp_path / "none.yaml"))
    rc = main(["--workspace", str(ws), "--cache-dir", str(world.dst), "pull", NAME,
               "--mirror", world.srv.url])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert f"cannot pull {NAME}" in err and "not a trusted key" in err
    assert snapshot(world.dst) == world.before

