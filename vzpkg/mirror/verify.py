"""Detached-signature checks with messages that say who signed and why it failed.

Keys are pin-checked and imported by :class:`vzpkg.gpg.Keyring` (a private
keyring holding only the pinned trusted keys).  Signatures are then checked by
``sqv`` (Sequoia's stand-alone verifier, the one apt uses) when it is
installed, against a keyring file holding exactly those pinned keys: it hashes
at the speed of the CPU's SHA extensions, where ``gpg --verify`` walks the data
byte by byte (about 200 MB/s), which would dominate a pull.  Without sqv, or
when sqv refuses, gpg gives the verdict, so a refusal always names the signing
key or says the data was altered.
"""

from __future__ import annotations

import os
import shutil
import subprocess
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


class Verifier:
    """Checks detached signatures against the pinned keys in *keyring*."""

    def __init__(self, keyring: Keyring, trusted: Sequence[str], *,
                 use_sqv: bool | None = None) -> None:
        self.keyring = keyring
        self.trusted = [t.upper() for t in trusted]
        sqv = shutil.which("sqv") if use_sqv is not False else None
        if use_sqv and sqv is None:
            raise MirrorError("sqv is not installed", hint="apt install sqv")
        self.sqv = sqv
        self.keyfile = keyring.home / "trusted-keys.pgp"
        if self.sqv:
            keyring.export_binary(self.trusted, self.keyfile)

    @property
    def backend(self) -> str:
        return "sqv" if self.sqv else "gpg"

    def _gpg_file(self, sig: Path, data: Path, what: str) -> str:
        with sig.open("rb") as s:
            v = self.keyring.gpg.verify_file(s, str(data))
        return _verdict(v, self.trusted, what)

    def start(self, sig: bytes, data: Path, *, what: str) -> Pending:
        """Begin checking detached *sig* over the file *data* (sqv runs meanwhile)."""
        return Pending(self, sig, data, what)

    def file(self, sig: bytes, data: Path, *, what: str) -> str:
        """Check detached *sig* over the file *data*; the signer's fingerprint."""
        return self.start(sig, data, what=what).result()

    def bytes(self, sig: bytes, data: bytes, *, what: str) -> str:
        """Check detached *sig* over *data* held in memory."""
        with tempfile.NamedTemporaryFile(dir=self.keyring.home) as d:
            d.write(data)
            d.flush()
            return self.file(sig, Path(d.name), what=what)


class Pending:
    """A signature check under way; :meth:`result` waits for the verdict."""

    def __init__(self, verifier: Verifier, sig: bytes, data: Path, what: str) -> None:
        self.v = verifier
        self.data = data
        self.what = what
        fd, name = tempfile.mkstemp(suffix=".asc", dir=verifier.keyring.home)
        with os.fdopen(fd, "wb") as f:
            f.write(sig)
        self.sig = Path(name)
        self.proc = None if verifier.sqv is None else subprocess.Popen(
            [verifier.sqv, "--keyring", str(verifier.keyfile), name, str(data)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def result(self) -> str:
        try:
            if self.proc is None:
                return self.v._gpg_file(self.sig, self.data, self.what)
            out, err = self.proc.communicate()
            fprs = out.split()
            if self.proc.returncode == 0 and fprs:
                return fprs[0].upper()
            self.v._gpg_file(self.sig, self.data, self.what)   # raises, precisely
            raise MirrorError(f"{self.what}: signature refused by sqv: "
                              f"{err.strip() or f'exit status {self.proc.returncode}'}",
                              hint="the signature or the signing key is not acceptable "
                                   "(expired, revoked or a weak algorithm?)")
        finally:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.sig.unlink(missing_ok=True)


def sqv_available() -> bool:
    return shutil.which("sqv") is not None
