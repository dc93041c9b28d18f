"""A tarball's detached signature checked from the sha256 pass the pull makes anyway.

A pull hashes every byte of a tarball with SHA-256 to compare it with the signed
index.  A v4 OpenPGP signature made with SHA-256 hashes the same bytes followed
by the signature's own hashed fields and a trailer (RFC 4880, section 5.2.4), so
a copy of that one SHA-256 state, given the trailer, is the digest the signature
signs: the tarball is read once, not twice (sqv would hash all of it again, on
the other core, next to ours: on two cores the download is CPU-bound).  The
public-key step is pyca/cryptography's (Ed25519, or RSA with PKCS#1 v1.5).

This is taken only where sqv has already vouched for the key.  The mirror's
index signature is checked by sqv first; when it is one v4 signature whose
hashed issuer fingerprint names a key (primary or subkey) of the certificate
sqv accepted, that key was valid when the index was signed (sqv judged its
self-signatures, binding, expiry and revocation).  A tarball signature is then
checked here only when it is one v4 binary-document signature, SHA-256, by that
same key, made no earlier than the key and no later than the index signature,
unexpired, with no critical subpacket this module does not know, and the key
is Ed25519 or RSA.  Anything else, and any refusal here, goes to sqv (or gpg)
over the file, which gives the verdict and its message.  The tarball's bytes
are bound in any case by their sha256 in the index that sqv verified.
"""

from __future__ import annotations

import hashlib
import time

from vzpkg.core.pgpkeys import ParseError, dearmor, fingerprint, packets

TAG_SIGNATURE = 2
TAG_PUBLIC_KEY = 6
TAG_PUBLIC_SUBKEY = 14
ALGO_RSA = (1, 3)                # RSA (encrypt or sign), RSA sign-only
ALGO_EDDSA = 22                  # EdDSA (legacy form: the Ed25519 curve by OID)
HASH_SHA256 = 8
SIG_BINARY = 0x00
ED25519_OID = bytes.fromhex("2b06010401da470f01")
# subpackets this module understands; a critical one of any other kind sends the
# signature to sqv, which knows more of them (RFC 4880, section 5.2.3.1)
SUB_CREATED, SUB_EXPIRES, SUB_ISSUER, SUB_ISSUER_FPR = 2, 3, 16, 33
KNOWN_SUBPACKETS = frozenset({SUB_CREATED, SUB_EXPIRES, SUB_ISSUER, SUB_ISSUER_FPR})
CLOCK_SKEW = 300                 # seconds a signature may lie in the future (sqv: 5 min)


class PublicKey:
    """One v4 public key or subkey: its fingerprint, algorithm and key material."""

    __slots__ = ("algo", "created", "fpr", "material")

    def __init__(self, fpr: str, algo: int, created: int,
                 material: bytes | tuple[int, int]) -> None:
        self.fpr = fpr
        self.algo = algo
        self.created = created
        self.material = material            # Ed25519: the 32-byte point; RSA: (n, e)


class Signature:
    """The fields of one v4 signature packet that a check needs."""

    __slots__ = (
        "algo",
        "created",
        "expires",
        "hash_algo",
        "hashed",
        "issuer_fpr",
        "issuer_keyid",
        "left16",
        "sig_type",
        "unknown_critical",
        "values",
    )

    def __init__(self) -> None:
        self.sig_type = self.algo = self.hash_algo = -1
        self.hashed = b""                   # version .. hashed subpackets: what is hashed
        self.created = self.expires = 0     # expires: seconds after created, 0 = never
        self.issuer_fpr: str | None = None
        self.issuer_keyid: str | None = None
        self.unknown_critical = False
        self.left16 = b""
        self.values: tuple[bytes, ...] = ()   # the MPIs' bytes


class Signer:
    """A key sqv vouched for, up to the time of the signature it accepted, and the
    fingerprint of its certificate (the pinned one)."""

    __slots__ = ("key", "primary", "until")

    def __init__(self, key: PublicKey, until: int, primary: str) -> None:
        self.key = key
        self.until = until
        self.primary = primary


def _mpi(body: bytes, pos: int) -> tuple[bytes, int]:
    if pos + 2 > len(body):
        raise ParseError("truncated MPI")
    n = (int.from_bytes(body[pos:pos + 2], "big") + 7) // 8
    if pos + 2 + n > len(body):
        raise ParseError("truncated MPI")
    return body[pos + 2:pos + 2 + n], pos + 2 + n


def _subpackets(area: bytes) -> list[tuple[int, bool, bytes]]:
    """(type, critical, data) of each subpacket in *area*."""
    out: list[tuple[int, bool, bytes]] = []
    pos = 0
    while pos < len(area):
        first = area[pos]
        if first < 192:
            length, pos = first, pos + 1
        elif first < 255:
            if pos + 1 >= len(area):
                raise ParseError("truncated subpacket length")
            length, pos = ((first - 192) << 8) + area[pos + 1] + 192, pos + 2
        else:
            if pos + 5 > len(area):
                raise ParseError("truncated subpacket length")
            length, pos = int.from_bytes(area[pos + 1:pos + 5], "big"), pos + 5
        if length < 1 or pos + length > len(area):
            raise ParseError("bad subpacket length")
        kind = area[pos]
        out.append((kind & 0x7F, bool(kind & 0x80), area[pos + 1:pos + length]))
        pos += length
    return out


def parse_signature(body: bytes) -> Signature:
    """The body of a signature packet; ParseError unless it is v4."""
    if len(body) < 6 or body[0] != 4:
        raise ParseError("not a v4 signature")
    s = Signature()
    s.sig_type, s.algo, s.hash_algo = body[1], body[2], body[3]
    hlen = int.from_bytes(body[4:6], "big")
    end = 6 + hlen
    if end + 2 > len(body):
        raise ParseError("truncated signature")
    s.hashed = body[:end]
    ulen = int.from_bytes(body[end:end + 2], "big")
    uend = end + 2 + ulen
    if uend + 2 > len(body):
        raise ParseError("truncated signature")
    for hashed, area in ((True, body[6:end]), (False, body[end + 2:uend])):
        for kind, critical, data in _subpackets(area):
            if kind == SUB_CREATED and hashed and len(data) == 4:
                s.created = int.from_bytes(data, "big")
            elif kind == SUB_EXPIRES and hashed and len(data) == 4:
                s.expires = int.from_bytes(data, "big")
            elif kind == SUB_ISSUER_FPR and hashed and len(data) == 21 and data[0] == 4:
                s.issuer_fpr = data[1:].hex().upper()
            elif kind == SUB_ISSUER and len(data) == 8:
                s.issuer_keyid = data.hex().upper()
            elif critical and (hashed or kind not in KNOWN_SUBPACKETS):
                s.unknown_critical = True
    s.left16 = body[uend:uend + 2]
    values, pos = [], uend + 2
    while pos < len(body):
        v, pos = _mpi(body, pos)
        values.append(v)
    s.values = tuple(values)
    return s


def read_signatures(data: bytes) -> list[Signature]:
    """Every signature packet of a detached signature file (armored or binary)."""
    if data.lstrip().startswith(b"-----BEGIN"):
        if data.count(b"-----BEGIN") != 1:
            raise ParseError("more than one armored block")
        try:
            data = dearmor(data.decode("ascii"), "SIGNATURE")
        except UnicodeDecodeError:
            raise ParseError("the armor is not ASCII") from None
    sigs = []
    for p in packets(data):
        if p.tag != TAG_SIGNATURE:
            raise ParseError(f"packet tag {p.tag} in a detached signature")
        sigs.append(parse_signature(data[p.body:p.end]))
    return sigs


def _public_key(body: bytes) -> PublicKey | None:
    """A v4 Ed25519 or RSA key packet's key; None for any other kind."""
    if len(body) < 6 or body[0] != 4:
        return None
    created, algo = int.from_bytes(body[1:5], "big"), body[5]
    if algo in ALGO_RSA:
        n, pos = _mpi(body, 6)
        e, _ = _mpi(body, pos)
        return PublicKey(fingerprint(body), algo, created,
                         (int.from_bytes(n, "big"), int.from_bytes(e, "big")))
    if algo == ALGO_EDDSA and len(body) > 7:
        oid_end = 7 + body[6]
        if body[7:oid_end] != ED25519_OID:
            return None
        point, _ = _mpi(body, oid_end)
        if len(point) != 33 or point[0] != 0x40:       # 0x40: the native encoding
            return None
        return PublicKey(fingerprint(body), algo, created, point[1:])
    return None


def public_keys(cert: bytes) -> dict[str, PublicKey]:
    """The Ed25519 and RSA keys and subkeys of a certificate, by fingerprint."""
    keys: dict[str, PublicKey] = {}
    for p in packets(cert):
        if p.tag in (TAG_PUBLIC_KEY, TAG_PUBLIC_SUBKEY):
            key = _public_key(cert[p.body:p.end])
            if key is not None:
                keys[key.fpr] = key
    return keys


def vouched_signer(index_sig: bytes, cert: bytes, primary: str) -> Signer | None:
    """The key behind *index_sig*, a signature sqv accepted with the certificate
    *cert* (fingerprint *primary*), when that is one v4 signature naming one of the
    certificate's keys."""
    try:
        sigs = read_signatures(index_sig)
        keys = public_keys(cert)
    except ParseError:
        return None
    if len(sigs) != 1 or sigs[0].issuer_fpr is None or not sigs[0].created:
        return None
    if sigs[0].issuer_keyid not in (None, sigs[0].issuer_fpr[-16:]):
        return None                         # the two issuer fields disagree
    key = keys.get(sigs[0].issuer_fpr)
    if key is None or sigs[0].algo != key.algo:
        return None
    return Signer(key, sigs[0].created, primary)


def checkable(sig_data: bytes, signer: Signer, now: float | None = None
              ) -> Signature | None:
    """The tarball signature in *sig_data* when this module may check it (see the
    module's docstring); None sends it to sqv."""
    try:
        sigs = read_signatures(sig_data)
    except ParseError:
        return None
    if len(sigs) != 1:
        return None
    s, key = sigs[0], signer.key
    now = time.time() if now is None else now
    if (s.sig_type != SIG_BINARY or s.hash_algo != HASH_SHA256 or s.algo != key.algo
            or s.issuer_fpr != key.fpr or s.unknown_critical
            or (s.issuer_keyid is not None and s.issuer_keyid != key.fpr[-16:])
            or not key.created <= s.created <= signer.until
            or s.created > now + CLOCK_SKEW
            or (s.expires and s.created + s.expires <= now)):
        return None
    return s


def digest(sig: Signature, state: hashlib._Hash) -> bytes:
    """What *sig* signs, given the SHA-256 *state* of the data (left unchanged)."""
    h = state.copy()
    h.update(sig.hashed)
    h.update(b"\x04\xff" + len(sig.hashed).to_bytes(4, "big"))
    return h.digest()


def valid(sig: Signature, key: PublicKey, state: hashlib._Hash) -> bool:
    """Whether *sig*, by *key*, is good over the data hashed into *state*.
    False too when pyca/cryptography is not installed (sqv decides then)."""
    try:
        from cryptography.exceptions import InvalidSignature
    except ImportError:
        return False

    d = digest(sig, state)
    if d[:2] != sig.left16:
        return False
    try:
        if key.algo == ALGO_EDDSA:
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
            if len(sig.values) != 2 or any(len(v) > 32 for v in sig.values):
                return False
            assert isinstance(key.material, bytes)
            r, s = (v.rjust(32, b"\0") for v in sig.values)
            Ed25519PublicKey.from_public_bytes(key.material).verify(r + s, d)
            return True
        from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
        from cryptography.hazmat.primitives.hashes import SHA256
        assert isinstance(key.material, tuple)
        n, e = key.material
        size = (n.bit_length() + 7) // 8
        if len(sig.values) != 1 or len(sig.values[0]) > size:
            return False
        pub = rsa.RSAPublicNumbers(e, n).public_key()
        pub.verify(sig.values[0].rjust(size, b"\0"), d, padding.PKCS1v15(),
                   utils.Prehashed(SHA256()))
        return True
    except (InvalidSignature, ValueError):
        return False
