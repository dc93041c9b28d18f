"""Detached-signature checks with messages that say who signed and why it failed.

Built on :class:`vzpkg.gpg.Keyring` (a private keyring holding only the pinned
trusted keys), but reads gpg's verdict itself so a signature by an unknown
key names that key instead of a bare "no public key".
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import gnupg

from vzpkg.errors import MirrorError
from vzpkg.gpg import Keyring

TRUST_HINT = ("add the key to pull.trusted_keys (or TEMPLATE_KEYS in vz.conf) only if you "
              "have checked its fingerprint; otherwise the mirror was tampered with")


def _verdict(v: gnupg.Verify, trusted: Sequence[str], what: str) -> str:
    if v.valid:
        primary = str(getattr(v, "pubkey_fingerprint", None) or v.fingerprint).upper()
        if primary in trusted or str(v.fingerprint).upper() in trusted:
            return primary
        raise MirrorError(f"{what}: signed by {primary}, which is not a trusted key",
                          hint=TRUST_HINT)
    status = str(getattr(v, "status", "") or "")
    if status == "no public key":
        raise MirrorError(f"{what}: signed by key {v.key_id}, which is not a trusted key "
                          f"(trusted: {', '.join(trusted)})", hint=TRUST_HINT)
    if status == "signature bad":
        raise MirrorError(f"{what}: bad signature: the signed file was altered",
                          hint="the mirror was tampered with or damaged")
    raise MirrorError(f"{what}: no valid signature ({status or 'not an OpenPGP signature'})",
                      hint="the mirror's signature file is missing, damaged or expired")


def verify_bytes(keyring: Keyring, sig: bytes, data: bytes, trusted: Sequence[str], *,
                 what: str) -> str:
    """Check detached *sig* over *data*; the signer's primary fingerprint."""
    with tempfile.NamedTemporaryFile(suffix=".asc", dir=keyring.home) as f:
        f.write(sig)
        f.flush()
        v = keyring.gpg.verify_data(f.name, data)
    return _verdict(v, trusted, what)


def verify_file(keyring: Keyring, sig: bytes, data: Path, trusted: Sequence[str], *,
                what: str) -> str:
    """Check detached *sig* over the file *data*; the signer's primary fingerprint."""
    with tempfile.NamedTemporaryFile(suffix=".asc", dir=keyring.home) as f:
        f.write(sig)
        f.flush()
        with open(f.name, "rb") as s:
            v = keyring.gpg.verify_file(s, str(data))
    return _verdict(v, trusted, what)
