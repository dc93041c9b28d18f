"""The cache manifest: ``<name>.manifest.json`` beside ``<name>.tar.zst``.

A manifest says what a cache is (name, serial, the plan and repository digests,
source date, tools), what is inside (every installed package, file count,
unpacked size) and which bytes it describes (tarball name, size, sha256, and the
detached signature's file name when signed).  It is written as JSON with sorted
keys and an indent of 2, so equal manifests are equal files.

:meth:`Manifest.from_json` trusts nothing: every field is checked and a bad one
raises :class:`~vzpkg.core.errors.StoreError` naming the file and the field.

Cache names are ``<distribution>-<release>-<arch>-<set>``; see :func:`parse_name`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, NoReturn

from vzpkg.core.errors import StoreError
from vzpkg.core.types import Compression, InstalledPackage, host_arch

SCHEMA = 1
# whole strings only (fullmatch): "$" would also match before a final "\n"
PART_RE = re.compile(r"[a-z0-9._]+")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
DEFAULT_SET = "minimal"
NAME_HINT = ("a cache name is <distribution>-<release>-<arch>-<set>, each part made of "
             "lowercase letters, digits, '.' and '_', e.g. debian-12-x86_64-minimal")


class CacheName(NamedTuple):
    """The four parts of a cache name."""

    distribution: str
    release: str
    arch: str
    set_name: str

    def __str__(self) -> str:
        return f"{self.distribution}-{self.release}-{self.arch}-{self.set_name}"


def parse_name(name: str, *, what: str = "cache name") -> CacheName:
    """Split and validate a cache name; raises StoreError when it is malformed."""
    parts = name.split("-")
    if len(parts) != 4 or not all(PART_RE.fullmatch(p) for p in parts):
        raise StoreError(f"{what} {name!r} is not a valid cache name", hint=NAME_HINT)
    if any(p.strip(".") == "" for p in parts):
        raise StoreError(f"{what} {name!r} has a part made only of dots", hint=NAME_HINT)
    return CacheName(*parts)


def expand_name(name: str) -> str:
    """The full cache name: the short form ``dist-release`` means host arch, set minimal."""
    parts = name.split("-")
    if len(parts) == 2 and all(PART_RE.fullmatch(p) for p in parts):
        name = f"{name}-{host_arch()}-{DEFAULT_SET}"
    try:
        parse_name(name)
    except StoreError as exc:
        raise StoreError(exc.message, hint=f"{exc.hint}, or the short form debian-12 "
                                           "(host architecture, set minimal)") from None
    return name


def utc_now() -> str:
    """The current time as ISO 8601 UTC with a Z suffix, to the second."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def tarball_name(name: str, compression: Compression) -> str:
    return name + compression.suffix


@dataclass(frozen=True)
class Manifest:
    """What one cache is and which bytes it is made of."""

    name: str
    distribution: str
    release: str
    arch: str
    set_name: str                      # JSON key "set"
    serial: int                        # 1, 2, 3 ... per committed cache
    plan_digest: str | None
    repo_digest: str | None
    source_date: int
    backend: str | None
    tools: Mapping[str, str]           # tool -> version, incl. "vzpkg"
    packages: tuple[InstalledPackage, ...]
    file_count: int
    unpacked_size: int
    tarball: str                       # file name, e.g. debian-12-x86_64-minimal.tar.zst
    compression: str                   # a Compression value
    size: int
    sha256: str
    signature: str | None = None       # file name of the detached .asc, when signed
    created: str = field(default_factory=utc_now)   # ISO 8601 UTC

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "name": self.name,
            "distribution": self.distribution,
            "release": self.release,
            "arch": self.arch,
            "set": self.set_name,
            "serial": self.serial,
            "plan_digest": self.plan_digest,
            "repo_digest": self.repo_digest,
            "source_date": self.source_date,
            "backend": self.backend,
            "tools": dict(sorted(self.tools.items())),
            "packages": [{"name": p.name, "version": p.version, "arch": p.arch}
                         for p in self.packages],
            "file_count": self.file_count,
            "unpacked_size": self.unpacked_size,
            "tarball": self.tarball,
            "compression": self.compression,
            "size": self.size,
            "sha256": self.sha256,
            "signature": self.signature,
            "created": self.created,
        }

    def dumps(self) -> str:
        """The manifest file's exact text."""
        return json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def loads(cls, text: str | bytes, *, source: str) -> Manifest:
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise StoreError(f"{source}: not valid JSON: {exc}",
                             hint="the manifest is damaged; rebuild or re-import the cache"
                             ) from None
        if not isinstance(data, dict):
            raise StoreError(f"{source}: expected a JSON object, got {type(data).__name__}",
                             hint="the manifest is damaged; rebuild or re-import the cache")
        return cls.from_json(data, source=source)

    @classmethod
    def from_json(cls, d: Mapping[str, Any], *, source: str) -> Manifest:
        """Validate *d* (a parsed manifest file named *source*) and build a Manifest."""
        r = _Reader(d, source)
        schema = d.get("schema", SCHEMA)
        if schema != SCHEMA:
            r.fail("schema", f"unsupported manifest schema {schema!r}, this vzpkg reads "
                   f"schema {SCHEMA}", hint="upgrade vzpkg, or rebuild the cache")
        known = {"schema", "name", "distribution", "release", "arch", "set", "serial",
                 "plan_digest", "repo_digest", "source_date", "backend", "tools",
                 "packages", "file_count", "unpacked_size", "tarball", "compression",
                 "size", "sha256", "signature", "created"}
        unknown = sorted(str(k) for k in d if k not in known)
        if unknown:
            r.fail(unknown[0], "unknown field", hint=f"known fields: {', '.join(sorted(known))}")

        name = r.string("name")
        try:
            parts = parse_name(name)
        except StoreError as exc:
            r.fail("name", exc.message, hint=exc.hint)
        for key, want in (("distribution", parts.distribution), ("release", parts.release),
                          ("arch", parts.arch), ("set", parts.set_name)):
            if r.string(key) != want:
                r.fail(key, f"{d[key]!r} does not match the name {name!r} (expected {want!r})")
        compression = r.string("compression")
        try:
            comp = Compression(compression)
        except ValueError:
            r.fail("compression", f"{compression!r} is not one of "
                   f"{', '.join(c.value for c in Compression)}")
        tarball = r.string("tarball")
        if tarball != tarball_name(name, comp):
            r.fail("tarball", f"{tarball!r} should be {tarball_name(name, comp)!r}",
                   hint="a manifest names only its own tarball, in the same directory")
        signature = r.opt_string("signature")
        if signature is not None and signature != tarball + ".asc":
            r.fail("signature", f"{signature!r} should be {tarball + '.asc'!r}")
        sha = r.string("sha256")
        if not SHA256_RE.fullmatch(sha):
            r.fail("sha256", f"{sha!r} is not 64 lowercase hexadecimal digits")
        for key in ("plan_digest", "repo_digest"):
            v = r.opt_string(key)
            if v is not None and not SHA256_RE.fullmatch(v):
                r.fail(key, f"{v!r} is not 64 lowercase hexadecimal digits")
        created = r.string("created")
        try:
            datetime.fromisoformat(created.replace("Z", "+00:00"))
        except ValueError:
            r.fail("created", f"{created!r} is not an ISO 8601 date and time")
        tools = d.get("tools")
        if not isinstance(tools, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in tools.items()):
            r.fail("tools", "expected an object of tool name -> version string")
        return cls(
            name=name, distribution=parts.distribution, release=parts.release,
            arch=parts.arch, set_name=parts.set_name,
            serial=r.integer("serial", minimum=1),
            plan_digest=r.opt_string("plan_digest"),
            repo_digest=r.opt_string("repo_digest"),
            source_date=r.integer("source_date", minimum=0),
            backend=r.opt_string("backend"),
            tools=dict(sorted(tools.items())),
            packages=r.packages(),
            file_count=r.integer("file_count", minimum=0),
            unpacked_size=r.integer("unpacked_size", minimum=0),
            tarball=tarball, compression=comp.value,
            size=r.integer("size", minimum=0),
            sha256=sha, signature=signature, created=created,
        )


class _Reader:
    """Typed field access that fails with the file and field named."""

    def __init__(self, d: Mapping[str, Any], source: str) -> None:
        self.d = d
        self.source = source

    def fail(self, key: str, message: str, *, hint: str | None = None) -> NoReturn:
        raise StoreError(f"{self.source}: field {key!r}: {message}",
                         hint=hint or "the manifest is damaged or was edited by hand; "
                                      "rebuild or re-import the cache")

    def _get(self, key: str) -> Any:
        if key not in self.d:
            self.fail(key, "missing")
        return self.d[key]

    def string(self, key: str) -> str:
        v = self._get(key)
        if not isinstance(v, str) or not v:
            self.fail(key, f"expected a non-empty string, got {v!r}")
        return str(v)

    def opt_string(self, key: str) -> str | None:
        v = self.d.get(key)
        if v is None:
            return None
        if not isinstance(v, str) or not v:
            self.fail(key, f"expected a non-empty string or null, got {v!r}")
        return str(v)

    def integer(self, key: str, *, minimum: int) -> int:
        v = self._get(key)
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(key, f"expected an integer, got {v!r}")
        if v < minimum:
            self.fail(key, f"expected an integer >= {minimum}, got {v}")
        return int(v)

    def packages(self) -> tuple[InstalledPackage, ...]:
        v = self._get("packages")
        if not isinstance(v, list):
            self.fail("packages", f"expected a list, got {type(v).__name__}")
        out: list[InstalledPackage] = []
        for i, p in enumerate(v):
            key = f"packages[{i}]"
            if not isinstance(p, dict) or set(p) != {"name", "version", "arch"} or not all(
                    isinstance(x, str) and x for x in p.values()):
                self.fail(key, "expected an object with non-empty string fields "
                               "name, version and arch")
            out.append(InstalledPackage(p["name"], p["version"], p["arch"]))
        return tuple(out)
