"""OpenPGP with python-gnupg: throwaway keyrings, pinned fingerprints, verify, sign.

Every operation runs in a private GNUPGHOME (a temporary directory) so the
user's own keyring is never read or changed, and nothing is trusted unless a
pinned key was imported into that private keyring on purpose.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # python-gnupg is imported only when gpg is really used
    import gnupg

from vzpkg.core.errors import GpgError
from vzpkg.core.pgpkeys import normalize_fingerprint


class Keyring:
    """A private, temporary GnuPG home.  Use as a context manager."""

    def __init__(self, home: Path | None = None) -> None:
        self._own = home is None
        self.home = Path(tempfile.mkdtemp(prefix="vzpkg-gpg-")) if home is None else home
        self.home.chmod(0o700)
        import gnupg
        self.gpg = gnupg.GPG(gnupghome=str(self.home))
        self.gpg.encoding = "utf-8"

    def __enter__(self) -> Keyring:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._own:
            # stop any agent started for this home before removing it
            if shutil.which("gpgconf"):
                subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "all"],
                               capture_output=True, check=False)
            shutil.rmtree(self.home, ignore_errors=True)

    def key_fingerprints(self, armored: str) -> list[str]:
        """Primary-key fingerprints in *armored* without importing it."""
        res = self.gpg.scan_keys_mem(armored) if hasattr(self.gpg, "scan_keys_mem") else None
        if res is None:
            with tempfile.NamedTemporaryFile("w", suffix=".asc") as f:
                f.write(armored)
                f.flush()
                res = self.gpg.scan_keys(f.name)
        return [str(k["fingerprint"]).upper() for k in res]

    def import_pinned(self, armored: str, fingerprint: str, *, source: str) -> str:
        """Import *armored* if its primary key has the pinned *fingerprint*.

        *source* names the file for error messages.  Returns the fingerprint.
        """
        want = normalize_fingerprint(fingerprint)
        found = self.key_fingerprints(armored)
        if not found:
            raise GpgError(f"{source}: no OpenPGP public key found in the file",
                           hint="use an ASCII-armored public key export")
        if want not in found:
            raise GpgError(
                f"{source}: key fingerprint does not match its pin: pinned {want}, "
                f"file has {', '.join(found)}",
                hint="check that the key file is the right one; never just copy the "
                     "file's fingerprint into the pin without verifying it elsewhere")
        res = self.gpg.import_keys(armored)
        if want not in [str(f).upper() for f in res.fingerprints]:
            raise GpgError(f"{source}: gpg could not import key {want}: {res.stderr.strip()}")
        return want

    def export_binary(self, fingerprints: Iterable[str], dest: Path) -> Path:
        """Write the given keys as a binary keyring file (for apt's Signed-By)."""
        data = self.gpg.export_keys(list(fingerprints), armor=False)
        if not data:
            raise GpgError("could not export the pinned keys")
        dest.write_bytes(data if isinstance(data, bytes) else data.encode("latin-1"))
        return dest

    def verify_detached(self, data_file: Path, sig_file: Path,
                        trusted: Iterable[str]) -> str:
        """Verify *sig_file* over *data_file*; the signer must be in *trusted*.

        Returns the fingerprint of the signing (primary) key.
        """
        trusted_set = {normalize_fingerprint(f) for f in trusted}
        with sig_file.open("rb") as sig:
            v = self.gpg.verify_file(sig, str(data_file))
        return self._check(v, trusted_set, what=f"signature {sig_file.name}")

    def verify_data(self, sig: bytes, data: bytes, trusted: Iterable[str], *,
                    what: str) -> str:
        """Verify a detached signature held in memory."""
        trusted_set = {normalize_fingerprint(f) for f in trusted}
        with tempfile.NamedTemporaryFile(suffix=".sig") as f:
            f.write(sig)
            f.flush()
            v = self.gpg.verify_data(f.name, data)
        return self._check(v, trusted_set, what=what)

    @staticmethod
    def _check(v: gnupg.Verify, trusted: set[str], *, what: str) -> str:
        if not v.valid:
            status = getattr(v, "status", None) or "no valid signature"
            raise GpgError(f"{what}: bad or missing signature ({status})")
        primary = str(getattr(v, "pubkey_fingerprint", None) or v.fingerprint).upper()
        signer = str(v.fingerprint).upper()
        if primary not in trusted and signer not in trusted:
            raise GpgError(f"{what}: signed by {primary}, which is not a trusted key",
                           hint="add the signer's key to the trusted keys if you trust it")
        return primary

    def sign_detached(self, data_file: Path, keyid: str, dest: Path,
                      passphrase: str | None = None) -> Path:
        """Write an armored detached signature of *data_file* to *dest*."""
        with data_file.open("rb") as f:
            # SHA-256: as strong as needed, and verifiers hash it at hardware speed
            s = self.gpg.sign_file(f, keyid=keyid, detach=True, binary=False,
                                   output=str(dest), passphrase=passphrase,
                                   extra_args=["--digest-algo", "SHA256"])
        if not s or not dest.exists():
            raise GpgError(f"signing {data_file.name} with {keyid} failed: "
                           f"{getattr(s, 'status', '')}",
                           hint="check that the secret key is in the keyring")
        return dest
