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
import re
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from vzpkg.core.errors import GpgError

TAG_PUBLIC_KEY = 6
CRC24_INIT = 0xB704CE
CRC24_POLY = 0x1864CFB
FPR_RE = re.compile(r"[0-9A-F]{40}")   # use with fullmatch: "$" also matches before a final "\n"


def normalize_fingerprint(fpr: str) -> str:
    """Upper-case, spaces removed; raises GpgError unless it is 40 hex digits."""
    clean = fpr.replace(" ", "").upper()
    if not FPR_RE.fullmatch(clean):
        raise GpgError(f"fingerprint {fpr!r} is not 40 hexadecimal digits",
                       hint="pin the full fingerprint, e.g. from 'gpg --show-keys KEYFILE'")
    return clean


class ParseError(ValueError):
    """The file is not in the subset of OpenPGP this module reads (gpg decides)."""


# CRC-24 of each byte value (RFC 4880, section 6.1: polynomial CRC24_POLY), written
# out rather than computed at every start (tests/unit/test_mirror_speed.py computes it)
CRC24_TABLE = (
    0x000000, 0x864CFB, 0x8AD50D, 0x0C99F6, 0x93E6E1, 0x15AA1A, 0x1933EC, 0x9F7F17,
    0xA18139, 0x27CDC2, 0x2B5434, 0xAD18CF, 0x3267D8, 0xB42B23, 0xB8B2D5, 0x3EFE2E,
    0xC54E89, 0x430272, 0x4F9B84, 0xC9D77F, 0x56A868, 0xD0E493, 0xDC7D65, 0x5A319E,
    0x64CFB0, 0xE2834B, 0xEE1ABD, 0x685646, 0xF72951, 0x7165AA, 0x7DFC5C, 0xFBB0A7,
    0x0CD1E9, 0x8A9D12, 0x8604E4, 0x00481F, 0x9F3708, 0x197BF3, 0x15E205, 0x93AEFE,
    0xAD50D0, 0x2B1C2B, 0x2785DD, 0xA1C926, 0x3EB631, 0xB8FACA, 0xB4633C, 0x322FC7,
    0xC99F60, 0x4FD39B, 0x434A6D, 0xC50696, 0x5A7981, 0xDC357A, 0xD0AC8C, 0x56E077,
    0x681E59, 0xEE52A2, 0xE2CB54, 0x6487AF, 0xFBF8B8, 0x7DB443, 0x712DB5, 0xF7614E,
    0x19A3D2, 0x9FEF29, 0x9376DF, 0x153A24, 0x8A4533, 0x0C09C8, 0x00903E, 0x86DCC5,
    0xB822EB, 0x3E6E10, 0x32F7E6, 0xB4BB1D, 0x2BC40A, 0xAD88F1, 0xA11107, 0x275DFC,
    0xDCED5B, 0x5AA1A0, 0x563856, 0xD074AD, 0x4F0BBA, 0xC94741, 0xC5DEB7, 0x43924C,
    0x7D6C62, 0xFB2099, 0xF7B96F, 0x71F594, 0xEE8A83, 0x68C678, 0x645F8E, 0xE21375,
    0x15723B, 0x933EC0, 0x9FA736, 0x19EBCD, 0x8694DA, 0x00D821, 0x0C41D7, 0x8A0D2C,
    0xB4F302, 0x32BFF9, 0x3E260F, 0xB86AF4, 0x2715E3, 0xA15918, 0xADC0EE, 0x2B8C15,
    0xD03CB2, 0x567049, 0x5AE9BF, 0xDCA544, 0x43DA53, 0xC596A8, 0xC90F5E, 0x4F43A5,
    0x71BD8B, 0xF7F170, 0xFB6886, 0x7D247D, 0xE25B6A, 0x641791, 0x688E67, 0xEEC29C,
    0x3347A4, 0xB50B5F, 0xB992A9, 0x3FDE52, 0xA0A145, 0x26EDBE, 0x2A7448, 0xAC38B3,
    0x92C69D, 0x148A66, 0x181390, 0x9E5F6B, 0x01207C, 0x876C87, 0x8BF571, 0x0DB98A,
    0xF6092D, 0x7045D6, 0x7CDC20, 0xFA90DB, 0x65EFCC, 0xE3A337, 0xEF3AC1, 0x69763A,
    0x578814, 0xD1C4EF, 0xDD5D19, 0x5B11E2, 0xC46EF5, 0x42220E, 0x4EBBF8, 0xC8F703,
    0x3F964D, 0xB9DAB6, 0xB54340, 0x330FBB, 0xAC70AC, 0x2A3C57, 0x26A5A1, 0xA0E95A,
    0x9E1774, 0x185B8F, 0x14C279, 0x928E82, 0x0DF195, 0x8BBD6E, 0x872498, 0x016863,
    0xFAD8C4, 0x7C943F, 0x700DC9, 0xF64132, 0x693E25, 0xEF72DE, 0xE3EB28, 0x65A7D3,
    0x5B59FD, 0xDD1506, 0xD18CF0, 0x57C00B, 0xC8BF1C, 0x4EF3E7, 0x426A11, 0xC426EA,
    0x2AE476, 0xACA88D, 0xA0317B, 0x267D80, 0xB90297, 0x3F4E6C, 0x33D79A, 0xB59B61,
    0x8B654F, 0x0D29B4, 0x01B042, 0x87FCB9, 0x1883AE, 0x9ECF55, 0x9256A3, 0x141A58,
    0xEFAAFF, 0x69E604, 0x657FF2, 0xE33309, 0x7C4C1E, 0xFA00E5, 0xF69913, 0x70D5E8,
    0x4E2BC6, 0xC8673D, 0xC4FECB, 0x42B230, 0xDDCD27, 0x5B81DC, 0x57182A, 0xD154D1,
    0x26359F, 0xA07964, 0xACE092, 0x2AAC69, 0xB5D37E, 0x339F85, 0x3F0673, 0xB94A88,
    0x87B4A6, 0x01F85D, 0x0D61AB, 0x8B2D50, 0x145247, 0x921EBC, 0x9E874A, 0x18CBB1,
    0xE37B16, 0x6537ED, 0x69AE1B, 0xEFE2E0, 0x709DF7, 0xF6D10C, 0xFA48FA, 0x7C0401,
    0x42FA2F, 0xC4B6D4, 0xC82F22, 0x4E63D9, 0xD11CCE, 0x575035, 0x5BC9C3, 0xDD8538,
)


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


class Packet(NamedTuple):
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
