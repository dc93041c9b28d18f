"""vzpkg publish: layout, signatures, no-op republish, --keep, refusals."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mirror_helpers import Keys, make_cache, make_keys, publish_tree
from vzpkg.cli.vzpkg import main
from vzpkg.core.errors import GpgError, MirrorError
from vzpkg.core.gpg import Keyring
from vzpkg.store.cachestore import CacheStore

NAME = "test-1-x86_64-minimal"
OTHER = "test-2-x86_64-default"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    k = make_keys(tmp_path_factory.mktemp("keys"))
    yield k
    k.close()


def tree_state(tree: Path) -> dict[str, tuple[int, int, str]]:
    """inode, mtime and sha256 of every file: any write shows up."""
    out = {}
    for p in sorted(tree.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[p.relative_to(tree).as_posix()] = (
                st.st_ino, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def test_publish_writes_signed_tree(tmp_path: Path, keys: Keys) -> None:
    src, tree = tmp_path / "src", tmp_path / "tree"
    m1 = make_cache(src, NAME, 200_000, seed=1)
    m2 = make_cache(src, OTHER, 100_000, seed=2)
    report = publish_tree(src, tree, keys)
    assert report.index_written and [c.status for c in report.caches] == ["published"] * 2
    doc = json.loads((tree / "index.json").read_text())
    assert doc["format"] == 1
    entries = {e["name"]: e for e in doc["caches"]}
    assert set(entries) == {NAME, OTHER}
    e = entries[NAME]
    assert (e["distribution"], e["release"], e["arch"], e["set"]) == \
        ("test", "1", "x86_64", "minimal")
    assert (e["serial"], e["size"], e["sha256"], e["packages"]) == \
        (m1.serial, m1.size, m1.sha256, len(m1.packages))
    assert e["tarball"] == f"caches/{NAME}/1/{NAME}.tar.zst"
    assert e["signature"] == e["tarball"] + ".asc"
    tar = tree / e["tarball"]
    assert hashlib.sha256(tar.read_bytes()).hexdigest() == m1.sha256
    assert hashlib.sha256((tree / e["manifest"]).read_bytes()).hexdigest() == \
        e["manifest_sha256"]
    assert entries[OTHER]["sha256"] == m2.sha256
    with Keyring() as kr:
        kr.import_pinned(keys.pub.read_text(), keys.fpr, source="trusted.asc")
        assert kr.verify_detached(tree / "index.json", tree / "index.json.asc",
                                  [keys.fpr]) == keys.fpr
        assert kr.verify_detached(tar, tree / e["signature"], [keys.fpr]) == keys.fpr
        tar.write_bytes(tar.read_bytes()[:-1] + b"\0")
        with pytest.raises(GpgError):       # the signature covers every byte
            kr.verify_detached(tar, tree / e["signature"], [keys.fpr])
    assert not [p for p in tree.rglob(".*")], "temporary files left in the tree"


def test_republish_unchanged_writes_nothing(tmp_path: Path, keys: Keys) -> None:
    src, tree = tmp_path / "src", tmp_path / "tree"
    make_cache(src, NAME, 100_000)
    publish_tree(src, tree, keys)
    before = tree_state(tree)
    report = publish_tree(src, tree, keys)
    assert not report.index_written
    assert [c.status for c in report.caches] == ["unchanged"]
    assert tree_state(tree) == before


def test_new_serial_and_keep(tmp_path: Path, keys: Keys) -> None:
    src, tree = tmp_path / "src", tmp_path / "tree"
    make_cache(src, NAME, 50_000, seed=1)
    make_cache(src, OTHER, 50_000, seed=9)
    publish_tree(src, tree, keys)
    for seed in (2, 3):
        make_cache(src, NAME, 50_000, seed=seed)
        report = publish_tree(src, tree, keys, [NAME])
        assert report.index_written and report.pruned == ()
    serials = sorted(p.name for p in (tree / "caches" / NAME).iterdir())
    assert serials == ["1", "2", "3"]
    doc = json.loads((tree / "index.json").read_text())
    entries = {e["name"]: e for e in doc["caches"]}
    assert entries[NAME]["serial"] == 3 and OTHER in entries   # other entries kept
    report = publish_tree(src, tree, keys, keep=2)
    assert not report.index_written                  # nothing new, only pruning
    assert report.pruned == (f"caches/{NAME}/1",)
    report = publish_tree(src, tree, keys, keep=1)
    assert report.pruned == (f"caches/{NAME}/2",)
    assert sorted(p.name for p in (tree / "caches" / NAME).iterdir()) == ["3"]
    assert (tree / entries[NAME]["tarball"]).is_file()
    assert (tree / "caches" / OTHER / "1").is_dir()


def test_corrupt_local_cache_is_not_published(tmp_path: Path, keys: Keys) -> None:
    src, tree = tmp_path / "src", tmp_path / "tree"
    make_cache(src, NAME, 50_000, seed=1)
    publish_tree(src, tree, keys)
    make_cache(src, NAME, 50_000, seed=2)
    before = tree_state(tree)
    tar = CacheStore(src).tarball(NAME)
    assert tar is not None
    tar.write_bytes(b"X" + tar.read_bytes()[1:])
    with pytest.raises(MirrorError, match="does not match its manifest"):
        publish_tree(src, tree, keys)
    assert {k: v for k, v in tree_state(tree).items() if "/2/" not in k} == before
    assert not (tree / "caches" / NAME / "2" / f"{NAME}.tar.zst").exists()
    assert not [p for p in tree.rglob(".*")]


def test_conflicting_serial_refused(tmp_path: Path, keys: Keys) -> None:
    tree = tmp_path / "tree"
    make_cache(tmp_path / "a", NAME, 50_000, seed=1)
    make_cache(tmp_path / "b", NAME, 50_000, seed=2)      # also serial 1, other bytes
    publish_tree(tmp_path / "a", tree, keys)
    before = tree_state(tree)
    with pytest.raises(MirrorError, match="already has serial 1 with different content"):
        publish_tree(tmp_path / "b", tree, keys)
    assert tree_state(tree) == before


def test_missing_secret_key_and_unknown_cache(tmp_path: Path, keys: Keys) -> None:
    src, tree = tmp_path / "src", tmp_path / "tree"
    make_cache(src, NAME, 10_000)
    with Keyring(keys.home) as kr, pytest.raises(MirrorError, match="no secret key"):
        from vzpkg.mirror import publish
        publish(CacheStore(src), tree, [], keyring=kr, keyid="F" * 40)
    with pytest.raises(MirrorError, match="no cache named test-9-x86_64-minimal"):
        publish_tree(src, tree, keys, ["test-9-x86_64-minimal"])
    assert not tree.exists() or not any(tree.iterdir())


def test_cli_publish(tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    src, tree = tmp_path / "src", tmp_path / "tree"
    make_cache(src, NAME, 10_000)
    argv = ["--cache-dir", str(src), "publish", str(tree), "--sign", keys.fpr,
            "--gnupghome", str(keys.home)]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["index_written"] and out["caches"][0]["status"] == "published"
    assert main(argv) == 0
    assert f"{NAME}: unchanged serial 1" in capsys.readouterr().out
    assert main(["--cache-dir", str(src), "publish", str(tree),
                 "--gnupghome", str(keys.home)]) == 2
    err = capsys.readouterr().err
    assert "publish needs a signing key" in err and "Traceback" not in err


def test_index_is_replaced_last(tmp_path: Path, keys: Keys,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Readers never see an index naming a file that is not yet in place."""
    import os
    src, tree = tmp_path / "src", tmp_path / "tree"
    make_cache(src, NAME, 50_000, seed=1)
    publish_tree(src, tree, keys)
    make_cache(src, NAME, 50_000, seed=2)
    renames: list[str] = []
    real = os.replace

    def spy(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> None:
        index = tree / "index.json"
        if index.exists():      # at every rename, the current index is complete
            doc = json.loads(index.read_text())
            for e in doc["caches"]:
                for key in ("tarball", "manifest", "signature"):
                    assert (tree / e[key]).is_file(), f"{e[key]} missing under the index"
        renames.append(Path(b).relative_to(tree).as_posix())
        real(a, b)

    monkeypatch.setattr(os, "replace", spy)
    publish_tree(src, tree, keys)
    assert renames[-2:] == ["index.json.asc", "index.json"]
    streams = ["streams/v1/images.json", "streams/v1/images.json.asc",
               "streams/v1/index.json", "streams/v1/index.json.asc"]
    assert sorted(renames[-6:-2]) == streams      # the simplestreams files just before
    assert set(renames[:-6]) == {f"caches/{NAME}/2/{NAME}{s}" for s in
                                 (".tar.zst", ".tar.zst.asc", ".manifest.json",
                                  ".incus.tar.xz")}


def test_concurrent_publishers_into_one_tree_lose_no_entry(tmp_path: Path, keys: Keys) -> None:
    """Jobs publishing at the same time into one directory each add their cache:
    none overwrites another's index entry, and with --keep 1 none prunes a serial
    the final index names."""
    import subprocess
    import sys
    names = [f"test-{i}-x86_64-minimal" for i in range(1, 5)]
    tree = tmp_path / "tree"
    for i, n in enumerate(names):
        make_cache(tmp_path / f"job{i}", n, 200_000, seed=i)
    publish_tree(tmp_path / "job0", tree, keys)
    make_cache(tmp_path / "job0", names[0], 200_000, seed=9)        # serial 2 of test-1
    procs = [subprocess.Popen(
        [sys.executable, "-m", "vzpkg.cli.vzpkg", "--cache-dir", str(tmp_path / f"job{i}"),
         "publish", str(tree), "--sign", keys.fpr, "--gnupghome", str(keys.home),
         "--keep", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(len(names))]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    index = json.loads((tree / "index.json").read_text())
    assert sorted(c["name"] for c in index["caches"]) == names      # no update was lost
    for c in index["caches"]:
        for k in ("tarball", "manifest", "signature"):
            assert (tree / c[k]).is_file(), c[k]                       # none dangles
    assert {c["name"]: c["serial"] for c in index["caches"]}[names[0]] == 2
