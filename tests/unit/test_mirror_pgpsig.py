"""A tarball's signature checked from the pull's own sha256 (vzpkg.mirror.pgpsig).

Real gpg-made keys (Ed25519, an Ed25519 signing subkey, RSA) and signatures, real
sqv; the claims: a good signature is accepted from the sha256 state alone, a
changed byte is refused, and every signature outside what the module knows (or
by another key than the one sqv vouched for) is left to sqv.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mirror_helpers import (
    Keys,
    MirrorServer,
    config_for,
    make_cache,
    make_key,
    make_keys,
    publish_tree,
)
from vzpkg.core.pgpkeys import dearmor
from vzpkg.mirror import MirrorConfig, Puller, PullReport
from vzpkg.mirror.config import TrustedKey
from vzpkg.mirror.pgpsig import Signer, checkable, valid, vouched_signer
from vzpkg.mirror.verify import sqv_available
from vzpkg.store.cachestore import CacheStore

NAME = "test-1-x86_64-minimal"
TAR = f"caches/{NAME}/1/{NAME}.tar.zst"
needs_sqv = pytest.mark.skipif(not sqv_available(), reason="sqv is not installed")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    k = make_keys(tmp_path_factory.mktemp("keys"))
    yield k
    k.close()


def gpg(home: Path, *args: str) -> str:
    return subprocess.run(["gpg", "--homedir", str(home), "--batch", "--yes",
                           "--pinentry-mode", "loopback", "--passphrase", "", *args],
                          check=True, capture_output=True, text=True).stdout


def sign(data: Path, home: Path, user: str, out: Path, *extra: str) -> bytes:
    """A detached signature as 'vzpkg publish' makes them (SHA-256), or with *extra*."""
    gpg(home, "--local-user", user, "--armor", "--detach-sign", "--output", str(out),
        "--digest-algo", "SHA256", *extra, str(data))
    return out.read_bytes()


def cert(home: Path, fpr: str) -> bytes:
    return dearmor(gpg(home, "--armor", "--export", fpr))


def fingerprints(home: Path) -> list[str]:
    out = gpg(home, "--with-colons", "--list-keys")
    return [ln.split(":")[9] for ln in out.splitlines() if ln.startswith("fpr:")]


def state_of(path: Path) -> hashlib._Hash:
    return hashlib.sha256(path.read_bytes())


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "tarball.bin"
    path.write_bytes(os.urandom(3 << 20))
    return path


def _signer(home: Path, primary: str, user: str, tmp: Path, data: Path) -> Signer:
    """The signer sqv vouches for when it accepts an index signed by *user*."""
    index_sig = sign(data, home, user, tmp / f"index-{user[:8]}.asc")
    signer = vouched_signer(index_sig, cert(home, primary), primary)
    assert signer is not None
    return signer


@pytest.mark.parametrize("kind", ["ed25519", "ed25519 subkey", "rsa2048"])
def test_a_signature_is_checked_from_the_sha256_of_the_data(
        tmp_path: Path, data: Path, kind: str) -> None:
    home = tmp_path / "home"
    primary = make_key(home) if kind != "rsa2048" else None
    if primary is None:
        home.mkdir(mode=0o700)
        gpg(home, "--quick-gen-key", "rsa <rsa@test.invalid>", "rsa2048", "sign", "never")
        primary = fingerprints(home)[0]
    user = primary + "!"
    if kind == "ed25519 subkey":
        gpg(home, "--quick-add-key", primary, "ed25519", "sign", "never")
        user = fingerprints(home)[1] + "!"
    tarball_sig = sign(data, home, user, tmp_path / "t.asc")
    signer = _signer(home, primary, user, tmp_path, data)    # the index: signed last
    assert signer.key.fpr == user[:-1] and signer.primary == primary
    sig = checkable(tarball_sig, signer)
    assert sig is not None
    assert valid(sig, signer.key, state_of(data))
    altered = tmp_path / "altered.bin"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 1
    altered.write_bytes(raw)
    assert not valid(sig, signer.key, state_of(altered))
    state = state_of(data)
    state.update(b"\0")                     # one byte more
    assert not valid(sig, signer.key, state)


def test_signatures_this_module_does_not_judge_go_to_sqv(
        tmp_path: Path, keys: Keys, data: Path) -> None:
    vouched = _signer(keys.home, keys.fpr, keys.fpr, tmp_path, data)
    # as if the index were signed after every signature made below (as a publisher
    # signs it: last); the clock may tick between gpg's runs here
    signer = Signer(vouched.key, int(time.time()) + 60, vouched.primary)

    def by(*extra: str, home: Path = keys.home, user: str = keys.fpr) -> bytes:
        return sign(data, home, user, tmp_path / "t.asc", *extra)

    good = by()
    assert checkable(good, signer) is not None
    # another key, even a trusted one: only the key sqv vouched for is known good
    assert checkable(by(home=keys.other_home, user=keys.other_fpr), signer) is None
    assert checkable(by("--digest-algo", "SHA512"), signer) is None
    assert checkable(by("--textmode"), signer) is None                # not binary
    assert checkable(by("--sig-notation", "!must@test.invalid=1"), signer) is None
    assert checkable(good + by(), signer) is None                     # two signatures
    assert checkable(b"not a signature", signer) is None
    # made after the index signature that sqv accepted: the key's state then is
    # unknown here
    earlier = Signer(signer.key, int(time.time()) - 3600, signer.primary)
    assert checkable(good, earlier) is None
    # expired by now
    expiring = by("--default-sig-expire", "1d")
    assert checkable(expiring, signer) is not None
    assert checkable(expiring, signer, now=time.time() + 2 * 86400) is None


def test_an_index_with_two_signatures_vouches_for_no_key(tmp_path: Path, keys: Keys,
                                                         data: Path) -> None:
    one = sign(data, keys.home, keys.fpr, tmp_path / "a.asc")
    two = one + sign(data, keys.other_home, keys.other_fpr, tmp_path / "b.asc")
    assert vouched_signer(one, cert(keys.home, keys.fpr), keys.fpr) is not None
    assert vouched_signer(two, cert(keys.home, keys.fpr), keys.fpr) is None
    # a signature by a key the certificate does not hold
    other = sign(data, keys.other_home, keys.other_fpr, tmp_path / "c.asc")
    assert vouched_signer(other, cert(keys.home, keys.fpr), keys.fpr) is None


@pytest.fixture
def sqv_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The real sqv, behind a wrapper on PATH that notes each file it checks."""
    real = subprocess.run(["sh", "-c", "command -v sqv"], capture_output=True,
                          text=True, check=True).stdout.strip()
    bin_dir, log = tmp_path / "bin", tmp_path / "sqv.log"
    bin_dir.mkdir()
    (bin_dir / "sqv").write_text(f'#!/bin/sh\nfor a; do last="$a"; done\n'
                                 f'echo "$last" >> {log}\nexec {real} "$@"\n')
    (bin_dir / "sqv").chmod(0o755)
    log.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return log


@needs_sqv
def test_a_pull_checks_the_tarball_signature_without_a_second_pass(
        tmp_path: Path, keys: Keys, sqv_log: Path) -> None:
    src, tree = tmp_path / "src", tmp_path / "tree"
    make_cache(src, NAME, 2 << 20, seed=5)
    publish_tree(src, tree, keys)
    with MirrorServer(tree) as srv, \
            Puller(CacheStore(tmp_path / "dst"), config_for(keys, [srv.url])) as p:
        report = p.pull([NAME])
    assert report.ok, report.failed
    assert len(sqv_log.read_text().splitlines()) == 1      # the index's signature only
    assert CacheStore(tmp_path / "dst").entry(NAME) is not None


@needs_sqv
def test_a_tarball_signed_by_a_subkey_the_index_did_not_use_goes_to_sqv(
        tmp_path: Path, keys: Keys, sqv_log: Path) -> None:
    home = tmp_path / "home"
    gpg(keys.home, "--export-secret-keys", "--output", str(tmp_path / "sec.pgp"), keys.fpr)
    home.mkdir(mode=0o700)
    gpg(home, "--import", str(tmp_path / "sec.pgp"))
    gpg(home, "--quick-add-key", keys.fpr, "ed25519", "sign", "never")
    sub = fingerprints(home)[1]
    pub = tmp_path / "trusted-with-subkey.asc"
    pub.write_text(gpg(home, "--armor", "--export", keys.fpr))
    src, tree = tmp_path / "src", tmp_path / "tree"
    make_cache(src, NAME, 2 << 20, seed=6)
    publish_tree(src, tree, keys)
    sign(tree / TAR, home, sub + "!", tree / f"{TAR}.asc")   # good, by the subkey

    def pull(dst: Path) -> PullReport:
        with MirrorServer(tree) as srv:
            cfg = MirrorConfig(mirrors=(srv.url,), trusted_keys=(TrustedKey(pub, keys.fpr),),
                               connect_timeout=3, read_timeout=3)
            with Puller(CacheStore(dst), cfg) as p:
                return p.pull([NAME])

    report = pull(tmp_path / "dst")
    assert report.ok, report.failed
    checked = sqv_log.read_text().splitlines()
    assert len(checked) == 2 and checked[1] == "/dev/stdin"  # the tarball, streamed
    # and a bad signature by that subkey is refused by sqv, not waved through
    other = tmp_path / "other.bin"
    other.write_bytes(b"something else")
    sign(other, home, sub + "!", tree / f"{TAR}.asc")
    report = pull(tmp_path / "dst2")
    assert not report.ok and "bad signature" in report.failed[0][1]


def test_issuer_fields_that_disagree_are_left_to_sqv(tmp_path: Path, keys: Keys,
                                                     data: Path) -> None:
    """The unhashed issuer key ID is not covered by the signature: one that names
    another key than the hashed fingerprint makes this module stand aside."""
    sig = dearmor(sign(data, keys.home, keys.fpr, tmp_path / "s.asc").decode(),
                  "SIGNATURE")
    field = b"\x09\x10" + bytes.fromhex(keys.fpr[-16:])       # subpacket 16, 8 bytes
    assert sig.count(field) == 1
    swapped = sig.replace(field, b"\x09\x10" + bytes.fromhex(keys.other_fpr[-16:]))
    mine = cert(keys.home, keys.fpr)
    assert vouched_signer(sig, mine, keys.fpr) is not None
    assert vouched_signer(swapped, mine, keys.fpr) is None
    signer = vouched_signer(sig, mine, keys.fpr)
    assert signer is not None
    assert checkable(sig, signer) is not None and checkable(swapped, signer) is None
