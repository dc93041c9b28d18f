"""Files a template points at: pinned keys and hook scripts.

Both are checked when the template is loaded, never halfway through a build:
a key file must exist and carry exactly the pinned 40-hex fingerprint; a hook
script must exist under one of ``Settings.hook_dirs`` and be executable.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from vzpkg.core.errors import GpgError
from vzpkg.core.gpg import Keyring
from vzpkg.core.pgpkeys import FPR_RE, ParseError, certificates, dearmor
from vzpkg.template.document import Template
from vzpkg.template.model import Key, Script, ScriptStage
from vzpkg.template.yamlpos import PathKey

HOOK_RE = re.compile(r"hooks/\S+")

# (sha256 of the armored text) -> primary fingerprints; gpg runs once per key file
_SCAN_CACHE: dict[str, tuple[str, ...]] = {}


def _fingerprints(armored: str) -> tuple[str, ...]:
    digest = hashlib.sha256(armored.encode()).hexdigest()
    if digest not in _SCAN_CACHE:
        try:    # no gpg process for the common case: one armored block
            if armored.count("-----BEGIN PGP PUBLIC KEY BLOCK-----") != 1:
                raise ParseError("not exactly one armored block")
            _SCAN_CACHE[digest] = tuple(f for f, _ in certificates(dearmor(armored)))
        except ParseError:
            with Keyring() as kr:
                _SCAN_CACHE[digest] = tuple(kr.key_fingerprints(armored))
    return _SCAN_CACHE[digest]


def key_search_dirs(tpl: Template, template_dirs: Sequence[Path]) -> list[Path]:
    dirs = [tpl.file.parent]
    dirs += [d for d in template_dirs if d not in dirs]
    return dirs


def load_key(tpl: Template, path: PathKey, file: str, fingerprint: str,
             template_dirs: Sequence[Path]) -> Key:
    """Read a key file and check its fingerprint against the pin."""
    fpr = fingerprint.replace(" ", "").upper()
    if not FPR_RE.fullmatch(fpr):
        raise tpl.error((*path, "fingerprint"),
                        f"fingerprint {fingerprint!r} is not 40 hexadecimal digits",
                        hint="pin the full primary-key fingerprint, as 'gpg --show-keys "
                             "KEYFILE' prints it (short key ids are not accepted)")
    rel = Path(file)
    dirs = key_search_dirs(tpl, template_dirs)
    candidates = [rel] if rel.is_absolute() else [d / rel for d in dirs]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise tpl.error((*path, "file"), f"key file {file!r} not found",
                        hint="key files are relative to the template's directory; "
                             f"looked in: {', '.join(str(d) for d in dirs)}")
    try:
        armored = found.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise tpl.error((*path, "file"), f"cannot read key file {found}: {exc}",
                        hint="keys must be ASCII-armored ('gpg --armor --export')") from None
    try:
        have = _fingerprints(armored)
    except GpgError as exc:
        raise tpl.error((*path, "file"), f"{found}: {exc.message}") from None
    if not have:
        raise tpl.error((*path, "file"), f"no OpenPGP public key found in {found}",
                        hint="use an ASCII-armored public key export")
    if len(have) > 1:
        raise tpl.error((*path, "file"),
                        f"key file {found.name} holds {len(have)} keys "
                        f"({', '.join(have)}); every key in it would be trusted",
                        hint="put exactly one public key in each file and pin each one")
    if fpr not in have:
        raise tpl.error((*path, "fingerprint"),
                        f"key file {found.name} has fingerprint {', '.join(have)}, "
                        f"not the pinned {fpr}",
                        hint="check the key file against the distribution's published "
                             "fingerprint before changing the pin")
    return Key(file=found, fingerprint=fpr, armored=armored)


def load_script(tpl: Template, path: PathKey, stage: ScriptStage, value: str,
                hook_dirs: Sequence[Path]) -> Script:
    """A hook file (``hooks/...``) or inline text (already rendered)."""
    if not HOOK_RE.fullmatch(value.strip()):
        return Script(stage=stage, text=value.encode("utf-8"), path=None)
    rel = PurePosixPath(value.strip()).relative_to("hooks")
    if ".." in rel.parts:
        raise tpl.error(path, f"script path {value!r} leaves the hooks directory",
                        hint="name a file under hooks/ without '..'")
    for d in hook_dirs:
        cand = d / rel
        if cand.exists():
            if not cand.is_file():
                raise tpl.error(path, f"script {cand} is not a regular file")
            if not os.access(cand, os.X_OK):
                raise tpl.error(path, f"script {cand} is not executable",
                                hint=f"chmod +x {cand}")
            return Script(stage=stage, text=cand.read_bytes(), path=cand)
    raise tpl.error(path, f"script file {value!r} not found",
                    hint="hook paths are resolved in: "
                         + ", ".join(str(d) for d in hook_dirs))
