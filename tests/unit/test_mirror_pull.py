"""vzpkg pull from a real HTTP server on 127.0.0.1: verify, resume, fail over."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mirror_helpers import (
    Keys,
    MirrorServer,
    config_for,
    dead_url,
    make_cache,
    make_keys,
    publish_tree,
    snapshot,
)
from vzpkg.cli.vzpkg import main
from vzpkg.core.settings import Settings
from vzpkg.mirror import Puller, PullReport, pull_cache
from vzpkg.store.cachestore import CacheStore
from vzpkg.store.manifest import expand_name

NAME = "test-1-x86_64-minimal"
OTHER = "test-2-x86_64-default"
TAR = f"caches/{NAME}/1/{NAME}.tar.zst"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    k = make_keys(tmp_path_factory.mktemp("keys"))
    yield k
    k.close()


@pytest.fixture
def tree(tmp_path: Path, keys: Keys) -> Path:
    src, tree = tmp_path / "src", tmp_path / "tree"
    make_cache(src, NAME, 3 << 20, seed=5)
    make_cache(src, OTHER, 100_000, seed=6)
    publish_tree(src, tree, keys)
    return tree


def test_pull_verifies_and_places_cache(tmp_path: Path, keys: Keys, tree: Path) -> None:
    dst = tmp_path / "dst"
    with MirrorServer(tree) as srv, Puller(CacheStore(dst), config_for(keys, [srv.url])) as p:
        report = p.pull([NAME])
    assert report.ok and [x.status for x in report.pulled] == ["pulled"]
    src = CacheStore(tmp_path / "src").entry(NAME)
    got = CacheStore(dst).entry(NAME)
    assert src is not None and got is not None
    assert got.tarball.read_bytes() == src.tarball.read_bytes()
    assert got.manifest.serial == src.manifest.serial        # the mirror's serial is kept
    assert got.manifest.sha256 == hashlib.sha256(got.tarball.read_bytes()).hexdigest()
    assert got.signature is not None and got.signature.is_file()
    assert not list((dst / ".partial").iterdir())
    assert CacheStore(dst).entry(OTHER) is None


def test_current_cache_downloads_nothing(tmp_path: Path, keys: Keys, tree: Path) -> None:
    dst = tmp_path / "dst"
    with MirrorServer(tree) as srv:
        with Puller(CacheStore(dst), config_for(keys, [srv.url])) as p:
            assert p.pull([NAME]).ok
        before = snapshot(dst)
        n = len(srv.log)
        with Puller(CacheStore(dst), config_for(keys, [srv.url])) as p:
            report = p.pull([NAME])
        later = [path for path, _ in srv.log[n:]]
    assert [x.status for x in report.pulled] == ["current"]
    assert later == ["index.json", "index.json.asc"]          # no tarball, no manifest
    assert snapshot(dst) == before


def test_resume_after_cut_in_the_middle(tmp_path: Path, keys: Keys, tree: Path) -> None:
    dst = tmp_path / "dst"
    with MirrorServer(tree) as srv:
        srv.bad.cut_after[TAR] = 1 << 20
        srv.bad.cut_times[TAR] = 1
        with Puller(CacheStore(dst), config_for(keys, [srv.url])) as p:
            report = p.pull([NAME])
        ranges = srv.requested(TAR)
    assert report.ok
    assert ranges == [None, f"bytes={1 << 20}-"]
    pulled = report.pulled[0]
    assert pulled.resumed_from == 0 and pulled.fetched == pulled.size


def test_resume_across_runs_after_giving_up(tmp_path: Path, keys: Keys, tree: Path) -> None:
    dst = tmp_path / "dst"
    make_cache(dst, NAME, 10_000, seed=99)          # an older cache is in place
    before = snapshot(dst)
    with MirrorServer(tree) as srv:
        srv.bad.cut_after[TAR] = 1 << 20           # every attempt is cut
        with Puller(CacheStore(dst), config_for(keys, [srv.url], retries=1)) as p:
            report = p.pull([NAME])
        assert not report.ok and "transfer cut after" in report.failed[0][1]
        assert snapshot(dst) == before               # nothing replaced
        parts = list((dst / ".partial").glob("*.part"))
        assert len(parts) == 1 and parts[0].stat().st_size == 2 << 20
        srv.bad.cut_after.clear()
        with Puller(CacheStore(dst), config_for(keys, [srv.url])) as p:
            report = p.pull([NAME])
        ranges = srv.requested(TAR)
    assert report.ok and report.pulled[0].resumed_from == 2 << 20
    assert ranges == [None, f"bytes={1 << 20}-", f"bytes={2 << 20}-"]
    got = CacheStore(dst).entry(NAME)
    assert got is not None and got.manifest.sha256 == report.pulled[0].sha256
    assert not list((dst / ".partial").iterdir())


def test_server_ignoring_range_restarts(tmp_path: Path, keys: Keys, tree: Path) -> None:
    dst = tmp_path / "dst"
    with MirrorServer(tree) as srv:
        srv.bad.cut_after[TAR] = 1 << 20
        srv.bad.cut_times[TAR] = 1
        srv.bad.ignore_range = True
        with Puller(CacheStore(dst), config_for(keys, [srv.url])) as p:
            report = p.pull([NAME])
    assert report.ok
    got = CacheStore(dst).entry(NAME)
    assert got is not None
    assert hashlib.sha256(got.tarball.read_bytes()).hexdigest() == report.pulled[0].sha256


def test_next_mirror_when_first_is_down(tmp_path: Path, keys: Keys, tree: Path) -> None:
    with MirrorServer(tree) as srv, \
            Puller(CacheStore(tmp_path / "dst"), config_for(keys, [dead_url(), srv.url])) as p:
        report = p.pull([], everything=True)
    assert report.ok
    assert sorted(x.name for x in report.pulled) == [NAME, OTHER]
    assert {x.mirror for x in report.pulled} == {srv.url}


def test_pull_cache_api(tmp_path: Path, keys: Keys, tree: Path) -> None:
    settings = Settings(workspace=None, cache_dir=tmp_path / "dst")
    with MirrorServer(tree) as srv:
        entry = pull_cache(OTHER, settings, config=config_for(keys, [srv.url]))
        assert entry.name == OTHER and entry.tarball.is_file()
        again = pull_cache(OTHER, settings, config=config_for(keys, [srv.url]))
    assert again.tarball == entry.tarball and again.manifest == entry.manifest


def test_cli_pull_with_configured_mirror(tmp_path: Path, keys: Keys, tree: Path,
                                         capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    ws = tmp_path / "ws"
    (ws / "metadata").mkdir(parents=True)
    monkeypatch.setenv("VZ_ROOT", str(tmp_path / "vz"))
    monkeypatch.delenv("VZPKG_CACHE_DIR", raising=False)
    monkeypatch.setenv("VZPKG_CONFIG", str(tmp_path / "none.yaml"))
    with MirrorServer(tree) as srv:
        (ws / "vzpkg.yaml").write_text(
            f"pull:\n  mirrors: [{srv.url}]\n  trusted_keys:\n"
            f"    - {{file: {keys.pub}, fingerprint: {keys.fpr}}}\n")
        assert main(["--workspace", str(ws), "pull", OTHER]) == 0
        out = capsys.readouterr()
        assert f"{OTHER}: pulled serial 1" in out.out and "verified" in out.out
        assert f"{OTHER}: downloading" in out.err            # plain progress lines
        assert main(["--workspace", str(ws), "pull", OTHER, "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["pulled"][0]["status"] == "current" and doc["failed"] == []
        assert main(["--workspace", str(ws), "pull", "test-9-x86_64-minimal"]) == 1
        err = capsys.readouterr().err
        assert "cannot pull test-9-x86_64-minimal" in err and "not in the index" in err
        assert "Traceback" not in err
    assert (ws / "caches" / f"{OTHER}.tar.zst").is_file()
    assert main(["--workspace", str(ws), "pull"]) == 2
    assert "--all" in capsys.readouterr().err


def test_redirected_mirror_is_followed_and_still_verified(tmp_path: Path, keys: Keys,
                                                          tree: Path) -> None:
    (tmp_path / "old").mkdir()
    with MirrorServer(tree) as srv, MirrorServer(tmp_path / "old") as front:
        front.redirect_to = srv.url
        with Puller(CacheStore(tmp_path / "dst"), config_for(keys, [front.url])) as p:
            report = p.pull([OTHER])
        assert report.ok and front.log and srv.log


def test_progress_bar_and_plain_lines() -> None:
    import io

    from vzpkg.mirror import TextProgress
    tty = io.StringIO()
    bar = TextProgress(tty, tty=True)
    bar.start(NAME, 4 << 20, 1 << 20, "http://m.test/x")
    bar.update(4 << 20)
    bar.finish(True)
    text = tty.getvalue()
    assert "resuming at 1.0 MiB" in text and "\r" in text and "100.0%" in text
    assert "done, 4.0 MiB" in text
    log = io.StringIO()
    plain = TextProgress(log, tty=False)
    plain.start(NAME, 100, 0, "http://m.test/x")
    for done in range(0, 101, 5):
        plain.update(done)
    plain.finish(True)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert [ln.split(": ")[1].split(" ")[0] for ln in lines[1:4]] == ["25%", "50%", "75%"]
    assert len(lines) == 5 and "done" in lines[-1]


def test_concurrent_pulls_download_once(tmp_path: Path, keys: Keys, tree: Path) -> None:
    import threading
    dst = tmp_path / "dst"
    reports: list[PullReport] = []

    def one() -> None:
        with Puller(CacheStore(dst), config_for(keys, [srv.url])) as p:
            reports.append(p.pull([NAME]))

    with MirrorServer(tree) as srv:
        threads = [threading.Thread(target=one) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        tarball_requests = srv.requested(TAR)
    assert all(r.ok for r in reports)
    assert sorted(r.pulled[0].status for r in reports) == ["current", "current", "pulled"]
    assert tarball_requests == [None]
    got = CacheStore(dst).entry(NAME)
    assert got is not None
    assert hashlib.sha256(got.tarball.read_bytes()).hexdigest() == got.manifest.sha256


def test_short_name_means_host_arch_and_minimal(tmp_path: Path, keys: Keys) -> None:
    arch = expand_name("test-7").split("-")[2]
    src, tree = tmp_path / "src", tmp_path / "tree"
    make_cache(src, f"test-7-{arch}-minimal", 10_000)
    publish_tree(src, tree, keys)
    settings = Settings(workspace=None, cache_dir=tmp_path / "dst")
    with MirrorServer(tree) as srv:
        entry = pull_cache("test-7", settings, config=config_for(keys, [srv.url]))
    assert entry.name == f"test-7-{arch}-minimal"


def test_damaged_partial_file_is_downloaded_again(tmp_path: Path, keys: Keys,
                                                  tree: Path) -> None:
    dst = tmp_path / "dst"
    with MirrorServer(tree) as srv:
        srv.bad.cut_after[TAR] = 1 << 20
        with Puller(CacheStore(dst), config_for(keys, [srv.url], retries=0)) as p:
            assert not p.pull([NAME]).ok
        (part,) = (dst / ".partial").glob("*.part")
        part.write_bytes(b"\0" * part.stat().st_size)      # the kept bytes rot on disk
        srv.bad.cut_after.clear()
        with Puller(CacheStore(dst), config_for(keys, [srv.url])) as p:
            report = p.pull([NAME])
        ranges = srv.requested(TAR)
    assert report.ok
    assert ranges == [None, f"bytes={1 << 20}-", None]      # resumed, then started over
    got = CacheStore(dst).entry(NAME)
    assert got is not None
    assert hashlib.sha256(got.tarball.read_bytes()).hexdigest() == got.manifest.sha256


def test_imported_cache_round_trip_verifies(tmp_path: Path, keys: Keys,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """vzpkg import -> publish -> pull elsewhere -> the store's own verify passes."""
    import subprocess

    from vzpkg.template.model import Key
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "os-release").write_text("ID=rt\nVERSION_ID=3\n")
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\necho hi\n")
    rootfs = tmp_path / "rootfs.tar"
    subprocess.run(["tar", "-C", str(root), "-cf", str(rootfs), "."], check=True)
    name = "rt-3-x86_64-minimal"
    src, tree, dst = tmp_path / "src", tmp_path / "tree", tmp_path / "dst"
    assert main(["--cache-dir", str(src), "import", str(rootfs), "--name", name]) == 0
    publish_tree(src, tree, keys)
    with MirrorServer(tree) as srv, Puller(CacheStore(dst), config_for(keys, [srv.url])) as p:
        assert p.pull([name]).ok
    key = Key(keys.pub, keys.fpr, keys.pub.read_text())
    report = CacheStore(dst).verify(name, trusted_keys=[key])
    assert report.ok, report.problems
    assert report.signer == keys.fpr
    capsys.readouterr()


# what a `vzpkg pull` process loads: none of the layers a pull does not use, and no
# PyYAML once its configuration file was parsed (vzpkg.core.configcache)
NOT_FOR_PULL = ("yaml", "jinja2", "jsonschema", "libarchive", "requests", "urllib3",
                "gnupg", "boto3", "email", "vzpkg.archive", "vzpkg.template",
                "vzpkg.build", "vzpkg.runtime", "vzpkg.cli.cmd_build", "vzpkg.cli.cmd_meta",
                "vzpkg.cli.cmd_cache", "vzpkg.cli.cmd_export", "vzpkg.cli.cmd_matrix",
                "vzpkg.mirror.s3", "vzpkg.mirror.streams", "vzpkg.store.export",
                # the publisher (and with it the store's writers of trees, gpg's keyring)
                "vzpkg.mirror.publish",
                # what the pull does without: ctypes (writeback), secrets and hmac (the
                # store's temporary names), gpg's module (sqv checks), the VE commands;
                # for the stand-ins see STAND_INS
                "ctypes", "secrets", "hmac", "vzpkg.core.gpg", "vzpkg.cli.cmd_ve")
# standard modules that modules of a pull import and the pull never uses: stand-ins
# (vzpkg.cli.vzpkg.DEFERRED) that a whole pull leaves unloaded
STAND_INS = ("inspect", "ast", "tokenize", "copy", "signal", "ipaddress", "ntpath", "zlib",
             "bz2", "lzma", "_compression", "weakref", "array", "struct")


def test_cli_pull_imports_no_other_layer(tmp_path: Path, keys: Keys, tree: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    probe = (
        "import json, sys\n"
        "from vzpkg.cli import vzpkg as cli\n"
        "for name in cli.DEFERRED['pull']:     # what main() does first\n"
        "    cli.defer_import(name)\n"
        "import vzpkg.core.configcache as cc\n"
        "cc.RACY_NS = 0          # keep the parse of the vzpkg.yaml written just now\n"
        "rc = cli.main(sys.argv[1:])\n"
        "print(json.dumps([rc, sorted(m for m, mod in sys.modules.items() if "
        f"((m.startswith({NOT_FOR_PULL!r}) or m in {STAND_INS!r}) "
        "and type(mod).__name__ != 'Deferred') or m == 'vzpkg.mirror.pull')]))\n")
    env = {**os.environ, "VZ_ROOT": str(tmp_path / "vz"), "XDG_CACHE_HOME": str(tmp_path),
           "VZPKG_CONFIG": str(tmp_path / "none.yaml")}
    env.pop("VZPKG_CACHE_DIR", None)
    env.pop("VZPKG_NO_PLAN_CACHE", None)

    def pull(dest: str) -> list[str]:
        r = subprocess.run([sys.executable, "-c", probe, "--workspace", str(ws),
                            "--cache-dir", str(tmp_path / dest), "pull", NAME, "--json"],
                           env=env, capture_output=True, text=True, check=True)
        rc, modules = json.loads(r.stdout.splitlines()[-1])
        assert rc == 0, r.stderr
        assert CacheStore(tmp_path / dest).entry(NAME) is not None
        return list(modules)

    with MirrorServer(tree) as srv:
        (ws / "vzpkg.yaml").write_text(
            f"pull:\n  mirrors: [{srv.url}]\n  trusted_keys:\n"
            f"    - {{file: {keys.pub}, fingerprint: {keys.fpr}}}\n")
        first = pull("one")
        assert "yaml" in first and "vzpkg.mirror.pull" in first     # the probe works
        assert pull("two") == ["vzpkg.mirror.pull"]
