"""Detached-signature checks with messages that say who signed and why it failed.

Signatures are checked by ``sqv`` (Sequoia's stand-alone verifier, the one apt
uses) when it is installed, against a keyring file holding exactly the pinned
certificates (:mod:`vzpkg.core.pgpkeys` picks them out of the key files and
checks the pins without starting gpg).  A tarball's check is a
:class:`Check` fed *while the download runs*: sqv reads the bytes from a pipe
(spliced from the ``.part`` file's page cache, no copy) and hashes them on the
other core, so its verdict is ready the moment the last byte is written.
Without sqv, or when sqv refuses, gpg gives the verdict over the file on disk
(its private keyring is made only then), so a refusal always names the signing
key or says the data was altered.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:   # python-gnupg is imported only when gpg is really used
    from hashlib import _Hash as Hash

    import gnupg

    from vzpkg.core.gpg import Keyring
    from vzpkg.mirror.pgpsig import Signature, Signer

from vzpkg.core.errors import GpgError, MirrorError
from vzpkg.core.pgpkeys import ParseError, normalize_fingerprint, pinned_certificate

TRUST_HINT = ("add the key to pull.trusted_keys (or TEMPLATE_KEYS in vz.conf) only if you "
              "have checked its fingerprint; otherwise the mirror was tampered with")
PIPE_SIZE = 1 << 20


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
    """Checks detached signatures against pinned keys; close() when done.

    *keys* are (armored key text, pinned fingerprint, source for messages).
    A key file that does not hold its pinned key is refused here, before any
    request is made.
    """

    def __init__(self, keys: Sequence[tuple[str, str, str]], *,
                 use_sqv: bool | None = None) -> None:
        self.keys = list(keys)
        self.trusted = [normalize_fingerprint(f) for _, f, _ in self.keys]
        sqv = shutil.which("sqv") if use_sqv is not False else None
        if use_sqv and sqv is None:
            raise MirrorError("sqv is not installed", hint="apt install sqv")
        self.sqv = sqv
        self._keyring: Keyring | None = None
        self._certs: dict[str, bytes] | None = None
        self.tmp = Path(tempfile.mkdtemp(prefix="vzpkg-verify-"))
        try:
            self.keyfile = self.tmp / "trusted-keys.pgp"
            if self.sqv is None:
                _ = self.keyring            # import (and pin-check) now
            else:
                try:
                    self._certs = {f: pinned_certificate(a, f, source=src) for (a, _, src), f
                                   in zip(self.keys, self.trusted, strict=True)}
                    data = b"".join(self._certs.values())
                except ParseError:          # not what keys.py reads: gpg decides
                    data = self._gpg_export()
                self.keyfile.write_bytes(data)
        except BaseException:
            self.close()
            raise

    @property
    def backend(self) -> str:
        return "sqv" if self.sqv else "gpg"

    @property
    def keyring(self) -> Keyring:
        """A private gpg keyring with the pinned keys (made on first use)."""
        if self._keyring is None:
            from vzpkg.core.gpg import Keyring  # gpg only where sqv cannot say
            kr = Keyring()
            try:
                for armored, fpr, source in self.keys:
                    kr.import_pinned(armored, fpr, source=source)
            except BaseException:
                kr.close()
                raise
            self._keyring = kr
        return self._keyring

    def _gpg_export(self) -> bytes:
        self.keyring.export_binary(self.trusted, self.keyfile)
        return self.keyfile.read_bytes()

    def close(self) -> None:
        if self._keyring is not None:
            self._keyring.close()
            self._keyring = None
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _gpg_file(self, sig: Path, data: Path, what: str) -> str:
        with sig.open("rb") as s:
            v = self.keyring.gpg.verify_file(s, str(data))
        return _verdict(v, self.trusted, what)

    @property
    def certs(self) -> dict[str, bytes]:
        """The pinned certificates this module can read, by fingerprint."""
        if self._certs is None:         # the gpg path, or a key file gpg had to read
            self._certs = {}
            for (armored, _, source), fpr in zip(self.keys, self.trusted, strict=True):
                try:
                    self._certs[fpr] = pinned_certificate(armored, fpr, source=source)
                except (ParseError, GpgError):
                    continue
        return self._certs

    def signer(self, sig: bytes, primary: str) -> Signer | None:
        """The key that made *sig*, a signature this verifier accepted from the
        certificate *primary*, where :mod:`vzpkg.mirror.pgpsig` can check that key's
        later signatures from the download's own sha256 (None: sqv checks them)."""
        cert = self.certs.get(primary)
        if cert is None:
            return None
        from vzpkg.mirror.pgpsig import vouched_signer
        return vouched_signer(sig, cert, primary)

    def stream(self, sig: bytes, *, what: str,
               signer: Signer | None = None) -> Check | HashCheck:
        """A check of detached *sig* that is fed the data as it arrives; one made
        from the download's sha256 state where *signer* (see :meth:`signer`) allows."""
        if signer is not None:
            from vzpkg.mirror.pgpsig import checkable
            parsed = checkable(sig, signer)
            if parsed is not None:
                return HashCheck(self, sig, what, parsed, signer)
        return Check(self, sig, what)

    def file(self, sig: bytes, data: Path, *, what: str) -> str:
        """Check detached *sig* over the file *data*; the signer's fingerprint."""
        return Check(self, sig, what, data).result(data)

    def bytes(self, sig: bytes, data: bytes, *, what: str) -> str:
        """Check detached *sig* over *data* held in memory."""
        fd, name = tempfile.mkstemp(dir=self.tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return self.file(sig, Path(name), what=what)
        finally:
            os.unlink(name)


class Check:
    """One signature check under way.

    Streaming (no *data* path): sqv reads the data from a pipe; :meth:`feed`
    passes it what was written of the file so far, :meth:`restart` starts
    over from byte 0 (a download that restarts), :meth:`result` closes the
    pipe and waits for the verdict.  Always call result() or close().
    """

    def __init__(self, verifier: Verifier, sig: bytes, what: str,
                 data: Path | None = None) -> None:
        self.v = verifier
        self.what = what
        fd, name = tempfile.mkstemp(suffix=".asc", dir=verifier.tmp)
        with os.fdopen(fd, "wb") as f:
            f.write(sig)
        self.sig = Path(name)
        self.data = data
        self.proc: subprocess.Popen[bytes] | None = None
        self.pipe = -1
        self.fed = 0
        self.copy = False           # splice not possible here: pread + write
        self.out: IO[bytes] | None = None
        self.err: IO[bytes] | None = None
        try:
            self._spawn()
        except BaseException:
            self.close()
            raise

    def _spawn(self) -> None:
        if self.v.sqv is None:
            return
        # the verdict goes to files (never a pipe that could fill up and stall sqv)
        self.out = tempfile.TemporaryFile(dir=self.v.tmp)  # noqa: SIM115 (closed in _stop)
        self.err = tempfile.TemporaryFile(dir=self.v.tmp)  # noqa: SIM115
        argv = [self.v.sqv, "--keyring", str(self.v.keyfile), str(self.sig)]
        if self.data is not None:
            self.proc = subprocess.Popen([*argv, str(self.data)], stdin=subprocess.DEVNULL,
                                         stdout=self.out, stderr=self.err)
            return
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            with contextlib.suppress(OSError):      # a bigger pipe: fewer wake-ups
                fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            self.proc = subprocess.Popen([*argv, "/dev/stdin"], stdin=r, stdout=self.out,
                                         stderr=self.err)
        except BaseException:
            os.close(w)
            raise
        finally:
            os.close(r)
        self.pipe = w
        self.fed = 0

    def _stop(self) -> None:
        if self.pipe >= 0:
            os.close(self.pipe)
            self.pipe = -1
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None
        for f in (self.out, self.err):
            if f is not None:
                f.close()
        self.out = self.err = None

    def restart(self) -> None:
        """Forget what was fed: the data starts again from byte 0."""
        if self.fed or (self.proc is not None and self.proc.poll() is not None):
            self._stop()
            self._spawn()

    def feed(self, fd: int, upto: int, *, wait: bool = False) -> None:
        """Bytes [0, upto) of the file open (readable) at *fd* are written: pass on
        what sqv has not had yet, all of it with *wait*, else what the pipe takes
        now (sqv catches up later from the page cache; the download never waits)."""
        flags = 0 if wait else os.SPLICE_F_NONBLOCK
        while self.fed < upto and self.pipe >= 0:
            count = upto - self.fed
            try:
                if self.copy:
                    data = os.pread(fd, min(count, PIPE_SIZE), self.fed)
                    n = os.write(self.pipe, data) if data else 0
                else:
                    n = os.splice(fd, self.pipe, count, offset_src=self.fed, flags=flags)
            except BlockingIOError:
                return
            except BrokenPipeError:          # sqv stopped reading: its verdict says why
                os.close(self.pipe)
                self.pipe = -1
                return
            except OSError as exc:
                if self.copy or exc.errno not in (errno.EINVAL, errno.ENOSYS):
                    raise
                self.copy = True             # e.g. a file system without splice
                continue
            if n <= 0:
                raise MirrorError(f"{self.what}: the data file ended early at byte "
                                  f"{self.fed}")
            self.fed += n

    def result(self, data: Path, state: Hash | None = None) -> str:
        """The signer's fingerprint once all of *data* was fed; MirrorError if refused.
        (*state*, the data's sha256 state, is what a :class:`HashCheck` needs.)"""
        try:
            if self.proc is None:
                return self.v._gpg_file(self.sig, data, self.what)
            if self.pipe >= 0:
                os.close(self.pipe)
                self.pipe = -1
            code = self.proc.wait()
            assert self.out is not None and self.err is not None
            self.out.seek(0)
            self.err.seek(0)
            fprs = self.out.read().decode(errors="replace").split()
            err = self.err.read().decode(errors="replace").strip()
            if code == 0 and fprs and fprs[0].upper() in self.v.trusted:
                return fprs[0].upper()
            self.v._gpg_file(self.sig, data, self.what)   # raises, precisely
            raise MirrorError(f"{self.what}: signature refused by sqv: "
                              f"{err or f'exit status {code}'}",
                              hint="the signature or the signing key is not acceptable "
                                   "(expired, revoked or a weak algorithm?)")
        finally:
            self.close()

    def close(self) -> None:
        self._stop()
        self.sig.unlink(missing_ok=True)


class HashCheck:
    """A check of a tarball's signature from the download's own sha256 state
    (:mod:`vzpkg.mirror.pgpsig`): nothing is fed, the verdict comes at result().
    A refusal here is never the last word: sqv (or gpg) then checks the file, and
    its verdict and message stand."""

    def __init__(self, verifier: Verifier, sig: bytes, what: str, parsed: Signature,
                 signer: Signer) -> None:
        self.v = verifier
        self.sig = sig
        self.what = what
        self.parsed = parsed
        self.signer = signer

    def restart(self) -> None:
        pass

    def feed(self, fd: int, upto: int, *, wait: bool = False) -> None:
        pass

    def result(self, data: Path, state: Hash | None = None) -> str:
        from vzpkg.mirror.pgpsig import valid
        if state is not None and valid(self.parsed, self.signer.key, state):
            return self.signer.primary
        return Check(self.v, self.sig, self.what, data).result(data)

    def close(self) -> None:
        pass


def sqv_available() -> bool:
    return shutil.which("sqv") is not None
