"""Pinned OpenPGP certificates without starting gpg.

Used for template keys (fingerprints at load time, the binary keyring that
gpgv, apt and dnf get during a build) and for the mirror's trusted keys (sqv).

A trusted key file is ASCII-armored; this module decodes the armor (checking
its CRC-24), walks the packet framing, computes each primary key's v4
fingerprint (SHA-1 over the public-key packet, RFC 4880 section 12.2) and
keeps only the certificates whose fingerprint is pinned: the bytes handed to
``sqv --keyring``.  Nothing here judges signatures or self-signatures; sqv does
that with the full certificate.  A file this parser cannot read is left to
gpg (:class:`vzpkg.core.gpg.Keyring`), which then gives the verdict as before.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from vzpkg.core.errors import GpgError

TAG_PUBLIC_KEY = 6
CRC24_INIT = 0xB704CE
CRC24_POLY = 0x1864CFB


class ParseError(ValueError):
    """The file is not in the subset of OpenPGP this module reads (gpg decides)."""


def _crc24_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= CRC24_POLY
        table.append(crc & 0xFFFFFF)
    return tuple(table)


CRC24_TABLE = _crc24_table()


def _crc24(data: bytes) -> int:
    crc = CRC24_INIT
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFF) ^ CRC24_TABLE[(crc >> 16) ^ byte]
    return crc


def dearmor(text: str, block: str = "PUBLIC KEY BLOCK") -> bytes:
    """The binary packets of one armored block (a public-key block, or *block*:
    "SIGNATURE" for a detached signature)."""
    lines = [ln.strip() for ln in text.splitlines()]
    try:
        start = lines.index(f"-----BEGIN PGP {block}-----")
        end = lines.index(f"-----END PGP {block}-----", start)
    except ValueError:
        raise ParseError(f"no armored {block.lower()}") from None
    body = lines[start + 1:end]
    if "" in body:                          # armor headers end at the first blank line
        body = body[body.index("") + 1:]
    crc = None
    if body and body[-1].startswith("="):
        crc = body.pop()[1:]
    try:
        data = base64.b64decode("".join(body), validate=True)
    except (binascii.Error, ValueError):
        raise ParseError("the armor is not valid base64") from None
    if crc is not None:
        try:
            want = int.from_bytes(base64.b64decode(crc, validate=True), "big")
        except (binascii.Error, ValueError):
            raise ParseError("the armor checksum is not valid base64") from None
        if _crc24(data) != want:
            raise ParseError("the armor checksum does not match")
    return data


@dataclass(frozen=True)
class Packet:
    """Where one OpenPGP packet lies in a buffer, and its tag."""

    tag: int
    start: int      # offset of the packet header
    body: int       # offset of the body
    end: int        # offset after the body


def packets(data: bytes) -> Iterator[Packet]:
    """The packets of *data* (no partial body lengths: keys never use them)."""
    pos = 0
    while pos < len(data):
        start, ctb = pos, data[pos]
        if not ctb & 0x80:
            raise ParseError(f"bad packet header at byte {pos}")
        if ctb & 0x40:                                   # new format
            tag, pos = ctb & 0x3F, pos + 1
            if pos >= len(data):
                raise ParseError("truncated packet header")
            first = data[pos]
            if first < 192:
                length, pos = first, pos + 1
            elif first < 224:
                if pos + 1 >= len(data):
                    raise ParseError("truncated packet header")
                length, pos = ((first - 192) << 8) + data[pos + 1] + 192, pos + 2
            elif first == 255:
                length, pos = int.from_bytes(data[pos + 1:pos + 5], "big"), pos + 5
            else:
                raise ParseError("partial body length in a key file")
        else:                                            # old format
            tag, kind, pos = (ctb >> 2) & 0x0F, ctb & 0x03, pos + 1
            if kind == 3:
                raise ParseError("indeterminate packet length in a key file")
            n = 1 << kind
            length, pos = int.from_bytes(data[pos:pos + n], "big"), pos + n
        if pos + length > len(data):
            raise ParseError("truncated packet")
        yield Packet(tag, start, pos, pos + length)
        pos += length


def fingerprint(body: bytes) -> str:
    """The fingerprint of a public-key packet body (v4: SHA-1; v5/v6: SHA-256)."""
    if not body:
        raise ParseError("empty public-key packet")
    if body[0] == 4:
        return hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body).hexdigest().upper()
    if body[0] in (5, 6):
        prefix = b"\x9a" if body[0] == 5 else b"\x9b"
        return hashlib.sha256(prefix + len(body).to_bytes(4, "big") + body).hexdigest().upper()
    raise ParseError(f"public-key packet version {body[0]}")


def certificates(data: bytes) -> list[tuple[str, bytes]]:
    """(primary fingerprint, certificate bytes) for each certificate in *data*."""
    certs: list[tuple[str, bytes]] = []
    fpr, start = "", -1
    for p in packets(data):
        if p.tag == TAG_PUBLIC_KEY:
            if start >= 0:
                certs.append((fpr, data[start:p.start]))
            fpr, start = fingerprint(data[p.body:p.end]), p.start
        elif start < 0:
            raise ParseError("the key file does not start with a public key")
    if start >= 0:
        certs.append((fpr, data[start:]))
    return certs


def pinned_certificate(armored: str, want: str, *, source: str) -> bytes:
    """The certificate with fingerprint *want* (normalized) out of *armored*.

    GpgError (the same messages as :meth:`vzpkg.core.gpg.Keyring.import_pinned`)
    when the file holds no key or not the pinned one; ParseError when this
    module cannot read the file (the caller then asks gpg).
    """
    certs = certificates(dearmor(armored))
    if not certs:
        raise GpgError(f"{source}: no OpenPGP public key found in the file",
                       hint="use an ASCII-armored public key export")
    for fpr, cert in certs:
        if fpr == want:
            return cert
    raise GpgError(
        f"{source}: key fingerprint does not match its pin: pinned {want}, "
        f"file has {', '.join(f for f, _ in certs)}",
        hint="check that the key file is the right one; never just copy the "
             "file's fingerprint into the pin without verifying it elsewhere")


def keyring_bytes(keys: Sequence[tuple[str, str, str]]) -> bytes:
    """A binary keyring of the pinned certificates: (armored, fingerprint, source)."""
    return b"".join(pinned_certificate(a, f, source=s) for a, f, s in keys)
