"""`vzpkg verify`: a flipped byte, a hand-edited manifest, an unsafe entry, signatures."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.store_helpers import NAME, make_manifest
from vzpkg import archive
from vzpkg.core.files import sha256_file
from vzpkg.core.gpg import Keyring
from vzpkg.core.types import Compression
from vzpkg.store.cachestore import CacheStore
from vzpkg.template.model import Key

ROOT = Path(__file__).resolve().parents[2]


def vzpkg(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vzpkg.cli.vzpkg", "--cache-dir",
                           str(cache), *args], capture_output=True, text=True, cwd=ROOT,
                          check=False)


def build_cache(store: CacheStore, tmp: Path) -> Path:
    """Pack a small real tree and commit it; returns the tarball path."""
    tree = tmp / "tree"
    (tree / "etc").mkdir(parents=True, exist_ok=True)
    (tree / "etc/os-release").write_text("ID=testos\n")
    (tree / "etc/hostname").write_text("ve\n")
    (tree / "bin").mkdir(exist_ok=True)
    if not (tree / "bin/sh").is_symlink():
        (tree / "bin/sh").symlink_to("busybox")
    staged = store.staging(NAME, Compression.ZSTD)
    res = archive.pack(tree, staged, source_date=1700000000)
    m = replace(make_manifest(), file_count=res.file_count, unpacked_size=res.unpacked_size,
                size=res.compressed_size, sha256=res.sha256)
    return store.commit(NAME, staged, m).tarball


def test_intact_cache_verifies(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "c")
    build_cache(store, tmp_path)
    report = store.verify(NAME)
    assert report.ok, report.problems
    r = vzpkg(store.dir, "verify", NAME, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["ok"] is True


def test_flipped_byte_is_detected(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "c")
    tarball = build_cache(store, tmp_path)
    data = bytearray(tarball.read_bytes())
    data[len(data) // 2] ^= 0x01
    tarball.write_bytes(bytes(data))
    assert any("sha256 mismatch" in p for p in store.verify(NAME).problems)
    r = vzpkg(store.dir, "verify", NAME)
    assert r.returncode == 1 and f"{NAME}: FAILED: sha256 mismatch" in r.stdout


@pytest.mark.parametrize(("field", "value", "expect"), [
    ("file_count", 999, "file count"),
    ("unpacked_size", 1, "unpacked size"),
    ("sha256", "0" * 64, "sha256 mismatch"),
    ("size", 5, "size mismatch"),
    ("serial", "two", "bad manifest"),
    ("tarball", "../x.tar.zst", "bad manifest"),
])
def test_hand_edited_manifest_is_detected(tmp_path: Path, field: str, value: object,
                                          expect: str) -> None:
    store = CacheStore(tmp_path / "c")
    build_cache(store, tmp_path)
    mpath = store.manifest_path(NAME)
    d = json.loads(mpath.read_text())
    d[field] = value
    mpath.write_text(json.dumps(d))
    r = vzpkg(store.dir, "verify", NAME)
    assert r.returncode == 1, r.stdout
    assert expect in r.stdout and "Traceback" not in r.stderr


def test_missing_manifest_and_unknown_cache(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "c")
    build_cache(store, tmp_path)
    store.manifest_path(NAME).unlink()
    r = vzpkg(store.dir, "verify", NAME, "nothere-1-x86_64-minimal")
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert lines[0] == f"{NAME}: FAILED: missing manifest {NAME}.manifest.json"
    assert lines[1].startswith("nothere-1-x86_64-minimal: FAILED: no cache named")


def test_unsafe_entry_in_stored_tarball(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "c")
    store.dir.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        ti = tarfile.TarInfo("etc/../../evil")
        ti.size = 1
        tf.addfile(ti, io.BytesIO(b"x"))
    tarball = store.dir / f"{NAME}.tar.zst"
    subprocess.run(["zstd", "-q", "-o", str(tarball)], input=buf.getvalue(), check=True)
    m = replace(make_manifest(), size=tarball.stat().st_size, sha256=sha256_file(tarball))
    store.manifest_path(NAME).write_text(m.dumps())
    r = vzpkg(store.dir, "verify", NAME)
    assert r.returncode == 1
    assert "unsafe entry 'etc/../../evil'" in r.stdout, r.stdout


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Keyring, str, Path]]:
    if not shutil.which("gpg"):
        pytest.skip("gpg is not installed")
    home = tmp_path_factory.mktemp("gnupg")
    kr = Keyring(home)
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--passphrase", "",
                    "--quick-gen-key", "vzpkg test signer", "ed25519", "sign", "never"],
                   check=True, capture_output=True)
    fpr = kr.gpg.list_keys()[0]["fingerprint"]
    pub = home / "signer.asc"
    pub.write_text(kr.gpg.export_keys(fpr))
    yield kr, fpr, pub
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)


def test_signature_good_bad_and_untrusted(tmp_path: Path,
                                          signer: tuple[Keyring, str, Path]) -> None:
    kr, fpr, pub = signer
    store = CacheStore(tmp_path / "c")
    tree_tmp = tmp_path / "t"
    tree_tmp.mkdir()
    # pack once, sign the staged bytes, commit with the signature
    first = build_cache(store, tree_tmp)
    sig = kr.sign_detached(first, fpr, tmp_path / "sig.asc")
    data = first.read_bytes()
    staged = store.staging(NAME, Compression.ZSTD)
    staged.write_bytes(data)
    m = store.manifest(NAME)
    assert m is not None
    entry = store.commit(NAME, staged, m, sig)
    assert entry.signature is not None and entry.signature.is_file()
    key = Key(pub, fpr, pub.read_text())

    report = store.verify(NAME, trusted_keys=[key])
    assert report.ok and report.signer == fpr, report.problems
    r = vzpkg(store.dir, "verify", NAME, "--trusted-key", f"{pub}:{fpr}")
    assert r.returncode == 0 and f"signed by {fpr}" in r.stdout, r.stdout + r.stderr
    # without a trusted key the signature is not checked, and the report says so
    assert any("not checked" in n for n in store.verify(NAME).notes)

    # a signature made over other bytes
    other = tmp_path / "other"
    other.write_bytes(b"other bytes")
    kr.sign_detached(other, fpr, tmp_path / "other.asc")
    shutil.copyfile(tmp_path / "other.asc", entry.signature)
    r = vzpkg(store.dir, "verify", NAME, "--trusted-key", f"{pub}:{fpr}")
    assert r.returncode == 1 and "bad signature" in r.stdout, r.stdout

    # a signature file that disappeared
    entry.signature.unlink()
    assert any("missing signature" in p for p in store.verify(NAME, trusted_keys=[key]).problems)


def test_verify_with_bad_trusted_key_spec(tmp_path: Path) -> None:
    r = vzpkg(tmp_path, "verify", NAME, "--trusted-key", "nofingerprint")
    assert r.returncode == 2 and "FILE:FINGERPRINT" in r.stderr
    key = tmp_path / "k.asc"
    key.write_text("x")
    r = vzpkg(tmp_path, "verify", NAME, "--trusted-key", f"{key}:1234")
    assert r.returncode == 2 and "40 hexadecimal" in r.stderr
    assert "Traceback" not in r.stderr


def test_remove_via_cli(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "c")
    build_cache(store, tmp_path)
    r = vzpkg(store.dir, "remove", NAME, "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == {"removed": NAME}
    assert [p.name for p in store.dir.iterdir()] == [".locks"]
    r = vzpkg(store.dir, "remove", NAME)
    assert r.returncode == 1 and "no cache named" in r.stderr
    assert os.listdir(store.dir) == [".locks"]
