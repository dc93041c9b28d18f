"""The frozen values that flow from the metadata loader into a build.

A :class:`Plan` is the single source of truth for one build: everything the
build does is decided here.  Its ``digest`` names the inputs (see
:func:`plan_digest`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from vzpkg.core.types import Compression

BACKEND_FAMILIES: dict[str, str] = {
    "debootstrap": "deb",
    "mmdebstrap": "deb",
    "dnf": "rpm",
}
"""The backends a template may name, each with the family of distributions it builds.
A backend class that registers (:class:`vzpkg.build.backends.Backend`) adds itself."""


class ScriptStage(StrEnum):
    PRE_CACHE = "pre-cache"        # on the host, before bootstrap
    POST_INSTALL = "post-install"  # inside the temporary VE
    POST_CACHE = "post-cache"      # on the host, before packing
    PRE_UPDATE = "pre-update"      # inside the VE, cache update
    POST_UPDATE = "post-update"    # inside the VE, cache update

    @property
    def in_ve(self) -> bool:
        return self in (ScriptStage.POST_INSTALL, ScriptStage.PRE_UPDATE,
                        ScriptStage.POST_UPDATE)


@dataclass(frozen=True)
class Repository:
    """One package repository.

    Debian: ``url`` + ``suite`` + ``components``.
    RPM: ``url`` (baseurl) or ``metalink`` or ``mirrorlist``.
    """

    name: str
    url: str | None = None
    suite: str | None = None
    components: tuple[str, ...] = ()
    metalink: str | None = None
    mirrorlist: str | None = None


@dataclass(frozen=True)
class Key:
    """An armored public key with its pinned 40-hex fingerprint (upper case)."""

    file: Path
    fingerprint: str
    armored: str = field(repr=False, compare=False)


@dataclass(frozen=True)
class Script:
    """A script for one stage; ``path`` is None for inline scripts."""

    stage: ScriptStage
    text: bytes = field(repr=False)
    path: Path | None = None


@dataclass(frozen=True)
class Options:
    """Build options a template may set."""

    compression: Compression = Compression.ZSTD
    trim_docs: bool = False
    trim_locales: bool = False
    weak_deps: bool = False
    variant: str = "minbase"      # debootstrap/mmdebstrap variant


@dataclass(frozen=True)
class Plan:
    """Everything one cache build needs, decided up front."""

    name: str                       # debian-12-x86_64-minimal
    distribution: str
    release: str
    arch: str                       # vzpkg's name: x86_64, aarch64
    target_arch: str                # the distribution's name: amd64, arm64
    set_name: str
    backend: str
    template_file: Path
    variables: tuple[tuple[str, str], ...]   # rendered variables, sorted
    repositories: tuple[Repository, ...]
    keys: tuple[Key, ...]
    packages: tuple[str, ...]
    scripts: tuple[Script, ...]
    options: Options = Options()
    digest: str = ""

    def var(self, name: str, default: str | None = None) -> str | None:
        return dict(self.variables).get(name, default)

    def script(self, stage: ScriptStage) -> Script | None:
        for s in self.scripts:
            if s.stage == stage:
                return s
        return None

    def to_json(self) -> dict[str, Any]:
        """The canonical JSON form (what the digest covers, plus the digest)."""
        data = _canonical(self)
        data["digest"] = self.digest
        return data


def _canonical(plan: Plan) -> dict[str, Any]:
    return {
        "name": plan.name,
        "distribution": plan.distribution,
        "release": plan.release,
        "arch": plan.arch,
        "target_arch": plan.target_arch,
        "set": plan.set_name,
        "backend": plan.backend,
        "variables": dict(plan.variables),
        "repositories": [
            {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(r).items()}
            for r in plan.repositories
        ],
        "keys": [{"file": k.file.name, "fingerprint": k.fingerprint} for k in plan.keys],
        "packages": list(plan.packages),
        "scripts": [
            {"stage": s.stage.value, "path": str(s.path) if s.path else None,
             "sha256": hashlib.sha256(s.text).hexdigest()}
            for s in plan.scripts
        ],
        "options": {k: (v.value if isinstance(v, StrEnum) else v)
                    for k, v in asdict(plan.options).items()},
    }


def plan_digest(plan: Plan) -> str:
    """sha256 over the canonical JSON of the plan, the scripts' bytes and the
    keys' fingerprints.  Script paths are excluded (only their bytes count), so
    the same template in another checkout gives the same digest."""
    h = hashlib.sha256()
    canon = _canonical(plan)
    for s in canon["scripts"]:
        s.pop("path")
    h.update(json.dumps(canon, sort_keys=True, separators=(",", ":")).encode())
    for s in plan.scripts:
        h.update(b"\0script\0" + s.stage.value.encode() + b"\0" + s.text)
    for k in plan.keys:
        h.update(b"\0key\0" + k.fingerprint.encode())
    return h.hexdigest()
