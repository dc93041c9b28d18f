"""The fast pull path: pinned keys without gpg, sqv fed during the download, flushing.

Real gpg-made keys and signatures, real sqv, real files; nothing here times
anything (bench/mirror.py does), it checks that the short cuts keep every
check and every refusal.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mirror_helpers import (
    Keys,
    MirrorServer,
    config_for,
    make_cache,
    make_keys,
    publish_tree,
    sign_file,
)
from vzpkg.core.errors import GpgError, MirrorError
from vzpkg.core.gpg import Keyring
from vzpkg.core.pgpkeys import (
    CRC24_POLY,
    CRC24_TABLE,
    ParseError,
    certificates,
    dearmor,
    pinned_certificate,
)
from vzpkg.mirror import Puller
from vzpkg.mirror.flush import Flusher
from vzpkg.mirror.verify import Check, Verifier, sqv_available
from vzpkg.store.cachestore import CacheStore

NAME = "test-1-x86_64-minimal"
TAR = f"caches/{NAME}/1/{NAME}.tar.zst"
needs_sqv = pytest.mark.skipif(not sqv_available(), reason="sqv is not installed")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    k = make_keys(tmp_path_factory.mktemp("keys"))
    yield k
    k.close()


def _verifier(keys: Keys, *, use_sqv: bool | None = None) -> Verifier:
    return Verifier([(keys.pub.read_text(), keys.fpr, str(keys.pub))], use_sqv=use_sqv)


def test_fingerprints_match_gpg(keys: Keys) -> None:
    both = keys.pub.read_text() + keys.other_pub.read_text()
    found = [f for f, _ in certificates(dearmor(keys.pub.read_text()))]
    assert found == [keys.fpr]
    with Keyring() as kr:
        assert kr.key_fingerprints(both) == [keys.fpr, keys.other_fpr]
    # a file with two keys: only the pinned certificate goes to sqv
    bundle = keys.pub.with_name("bundle.asc")
    with Keyring() as kr:
        kr.import_pinned(keys.pub.read_text(), keys.fpr, source="a")
        kr.import_pinned(keys.other_pub.read_text(), keys.other_fpr, source="b")
        bundle.write_bytes(kr.gpg.export_keys([keys.fpr, keys.other_fpr], armor=True)
                           .encode())
    cert = pinned_certificate(bundle.read_text(), keys.other_fpr, source="bundle.asc")
    assert [f for f, _ in certificates(cert)] == [keys.other_fpr]


def test_wrong_pin_and_no_key_give_the_gpg_messages(keys: Keys) -> None:
    with pytest.raises(GpgError, match="does not match its pin: pinned " + keys.other_fpr):
        pinned_certificate(keys.pub.read_text(), keys.other_fpr, source="trusted.asc")
    with pytest.raises(GpgError, match="does not match its pin"):
        _verifier(Keys(keys.home, keys.other_fpr, keys.pub, keys.other_home,
                       keys.other_fpr, keys.other_pub), use_sqv=None)
    with pytest.raises(ParseError):
        dearmor("not a key\n")


def test_the_crc24_table_is_the_polynomials() -> None:
    # pgpkeys has the table written out (no 2048 steps at every start): the same table
    # as computed from the polynomial, bit by bit (RFC 4880, section 6.1)
    want = []
    for byte in range(256):
        crc = byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= CRC24_POLY
        want.append(crc & 0xFFFFFF)
    assert tuple(want) == CRC24_TABLE


def test_damaged_armor_is_left_to_gpg(keys: Keys) -> None:
    text = keys.pub.read_text()
    lines = text.splitlines()
    crc = next(i for i, ln in enumerate(lines) if ln.startswith("="))
    lines[crc] = "=AAAA"                        # the CRC no longer matches
    with pytest.raises(ParseError, match="checksum"):
        dearmor("\n".join(lines))
    # gpg is asked instead and gives its verdict, as before this parser existed
    bad = keys.pub.with_name("badcrc.asc")
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(GpgError, match=r"badcrc\.asc: no OpenPGP public key found"):
        Verifier([(bad.read_text(), keys.fpr, str(bad))])


@needs_sqv
def test_streamed_check_accepts_and_refuses(keys: Keys, tmp_path: Path) -> None:
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(3 << 20))
    sig = sign_file(data, keys.home, keys.fpr).read_bytes()
    v = _verifier(keys)
    try:
        for copy in (False, True):          # splice, and the pread/write fallback
            check = v.stream(sig, what="data.bin.asc")
            assert isinstance(check, Check)
            check.copy = copy
            with data.open("rb") as f:
                check.feed(f.fileno(), 1 << 20)
                check.restart()             # a download that starts over
                check.feed(f.fileno(), 2 << 20)
                check.feed(f.fileno(), 3 << 20, wait=True)
            assert check.result(data) == keys.fpr
        altered = tmp_path / "altered.bin"
        raw = bytearray(data.read_bytes())
        raw[2 << 20] ^= 1
        altered.write_bytes(raw)
        check = v.stream(sig, what="data.bin.asc")
        with altered.open("rb") as f:       # one bit changed: refused, precisely
            check.feed(f.fileno(), len(raw), wait=True)
        with pytest.raises(MirrorError, match="bad signature: the signed file was altered"):
            check.result(altered)
        assert v._keyring is not None       # gpg was asked only to explain the refusal
    finally:
        v.close()
    assert not v.tmp.exists()


def test_flusher_writes_everything_and_stops(tmp_path: Path) -> None:
    path = tmp_path / "f"
    chunk = os.urandom(1 << 20)
    before = threading.active_count()
    with path.open("w+b", buffering=0) as f, Flusher(f.fileno(), step=1 << 20) as fl:
        for i in range(5):
            f.write(chunk)
            fl.wrote((i + 1) << 20)
        fl.finish()
    assert path.read_bytes() == chunk * 5
    assert threading.active_count() == before
    with pytest.raises(OSError), Flusher(999_999) as fl:    # not a file descriptor
        fl.finish()


@needs_sqv
def test_good_pull_starts_no_gpg_and_leaves_nothing(keys: Keys, tmp_path: Path) -> None:
    src, tree = tmp_path / "src", tmp_path / "tree"
    m = make_cache(src, NAME, 2 << 20, seed=3)
    publish_tree(src, tree, keys)
    before = threading.active_count()
    with MirrorServer(tree) as srv, \
            Puller(CacheStore(tmp_path / "dst"), config_for(keys, [srv.url])) as p:
        report = p.pull([NAME])
        assert report.ok and p.verifier._keyring is None
        tmp = p.verifier.tmp
    assert CacheStore(tmp_path / "dst").entry(NAME).manifest.sha256 == m.sha256  # type: ignore[union-attr]
    assert not tmp.exists() and threading.active_count() == before
    assert list((tmp_path / "dst" / ".partial").iterdir()) == []


@needs_sqv
def test_tarball_altered_after_signing_refused_by_streamed_check(keys: Keys,
                                                                 tmp_path: Path) -> None:
    """sha256 in the index matches, the detached signature does not: refused."""
    src, tree = tmp_path / "src", tmp_path / "tree"
    make_cache(src, NAME, 2 << 20, seed=4)
    publish_tree(src, tree, keys)
    other = tmp_path / "other.bin"
    other.write_bytes(os.urandom(1000))
    (tree / f"{TAR}.asc").write_bytes(sign_file(other, keys.home, keys.fpr).read_bytes())
    with MirrorServer(tree) as srv, \
            Puller(CacheStore(tmp_path / "dst"), config_for(keys, [srv.url])) as p:
        report = p.pull([NAME])
    assert not report.ok
    assert "bad signature" in report.failed[0][1] and "deleted" in report.failed[0][1]
    assert CacheStore(tmp_path / "dst").entry(NAME) is None
    assert list((tmp_path / "dst" / ".partial").iterdir()) == []
