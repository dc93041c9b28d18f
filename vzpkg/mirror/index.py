"""The mirror index: what a published tree holds, parsed strictly.

The index is the one signed document of a mirror; every other file is checked
against the sha256 and size it names.  Parsing refuses any path that could
leave the mirror (absolute, ``..``, a scheme or another host, backslashes), so
a hostile index can never make a pull read or write elsewhere.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from vzpkg.core.errors import MirrorError

INDEX_FORMAT = 1
INDEX_NAME = "index.json"
INDEX_SIG_NAME = "index.json.asc"
# whole strings only (fullmatch): "$" would also match before a final "\n"
SHA256_RE = re.compile(r"[0-9a-f]{64}")
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._]*(-[a-z0-9._]+){3}")
PATH_PART_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def check_name(name: str, *, where: str) -> str:
    """A cache name as the store accepts it; raises MirrorError otherwise."""
    if not NAME_RE.fullmatch(name) or ".." in name:
        raise MirrorError(f"{where}: {name!r} is not a cache name",
                          hint="cache names are <distribution>-<release>-<arch>-<set>, "
                               "e.g. debian-12-x86_64-minimal")
    return name


def safe_relpath(value: object, *, where: str) -> str:
    """A path inside the mirror: relative, no ``..``, no scheme or host.

    Only plain segments (letters, digits, ``. _ + -``, not starting with a dot)
    are allowed, so the result can be appended to the mirror's base URL as is.
    """
    if not isinstance(value, str) or not value:
        raise MirrorError(f"{where}: expected a relative path, got {value!r}")
    if "\\" in value or "://" in value or value.startswith("/") or "?" in value \
            or "#" in value or "%" in value:
        raise MirrorError(f"{where}: path {value!r} points outside the mirror",
                          hint="index paths must be relative to the mirror's base URL; "
                               "the index was refused and nothing was downloaded")
    for part in value.split("/"):
        if part in (".", "..") or not PATH_PART_RE.fullmatch(part):
            raise MirrorError(f"{where}: path {value!r} points outside the mirror or has "
                              f"an unsafe segment {part!r}",
                              hint="index paths must be plain relative paths; the index "
                                   "was refused and nothing was downloaded")
    return value


class IndexEntry(NamedTuple):
    """One published cache (the newest serial of one name)."""

    name: str
    distribution: str
    release: str
    arch: str
    set_name: str
    serial: int
    size: int
    sha256: str
    compression: str
    tarball: str
    manifest: str
    manifest_sha256: str
    signature: str
    packages: int
    created: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "distribution": self.distribution,
            "release": self.release, "arch": self.arch, "set": self.set_name,
            "serial": self.serial, "size": self.size, "sha256": self.sha256,
            "compression": self.compression, "tarball": self.tarball,
            "manifest": self.manifest, "manifest_sha256": self.manifest_sha256,
            "signature": self.signature, "packages": self.packages,
            "created": self.created,
        }

    @classmethod
    def from_json(cls, d: object, *, source: str) -> IndexEntry:
        if not isinstance(d, Mapping):
            raise MirrorError(f"{source}: expected an object, got {type(d).__name__}")

        def field(key: str, kind: type[Any]) -> Any:
            if key not in d:
                raise MirrorError(f"{source}: field {key!r} is missing")
            val = d[key]
            if kind is int and (isinstance(val, bool) or not isinstance(val, int)):
                raise MirrorError(f"{source}: field {key!r} must be an integer, got {val!r}")
            if not isinstance(val, kind):
                raise MirrorError(f"{source}: field {key!r} must be a {kind.__name__}, "
                                  f"got {val!r}")
            return val

        name = check_name(field("name", str), where=f"{source}: field 'name'")
        for key in ("sha256", "manifest_sha256"):
            if not SHA256_RE.fullmatch(field(key, str)):
                raise MirrorError(f"{source}: field {key!r} is not 64 lower-case hex digits")
        serial, size, packages = field("serial", int), field("size", int), field("packages",
                                                                                  int)
        if serial < 1 or size < 0 or packages < 0:
            raise MirrorError(f"{source}: serial must be >= 1 and size, packages >= 0")
        paths = {k: safe_relpath(field(k, str), where=f"{source}: field {k!r}")
                 for k in ("tarball", "manifest", "signature")}
        created = d.get("created", "")
        return cls(
            name=name, distribution=field("distribution", str),
            release=field("release", str), arch=field("arch", str),
            set_name=field("set", str), serial=serial, size=size,
            sha256=field("sha256", str), compression=field("compression", str),
            tarball=paths["tarball"], manifest=paths["manifest"],
            signature=paths["signature"], manifest_sha256=field("manifest_sha256", str),
            packages=packages, created=created if isinstance(created, str) else "",
        )


class Index(NamedTuple):
    """The whole index: entries sorted by name, at most one per name."""

    entries: tuple[IndexEntry, ...]
    generated: str = ""

    def get(self, name: str) -> IndexEntry | None:
        for e in self.entries:
            if e.name == name:
                return e
        return None

    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def with_entries(self, new: Mapping[str, IndexEntry], generated: str) -> Index:
        merged = {e.name: e for e in self.entries}
        merged.update(new)
        return Index(tuple(merged[n] for n in sorted(merged)), generated)

    def to_bytes(self) -> bytes:
        doc = {"format": INDEX_FORMAT, "generated": self.generated,
               "caches": [e.to_json() for e in self.entries]}
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str) -> Index:
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MirrorError(f"{source}: not a valid JSON index: {exc}",
                              hint="is the mirror URL right? it must point at the "
                                   "directory holding index.json") from None
        if not isinstance(doc, dict):
            raise MirrorError(f"{source}: expected a JSON object at the top")
        if doc.get("format") != INDEX_FORMAT:
            raise MirrorError(f"{source}: unsupported index format {doc.get('format')!r}",
                              hint=f"this vzpkg reads format {INDEX_FORMAT}; upgrade vzpkg")
        caches = doc.get("caches")
        if not isinstance(caches, list):
            raise MirrorError(f"{source}: field 'caches' must be a list")
        entries: dict[str, IndexEntry] = {}
        for i, raw in enumerate(caches):
            e = IndexEntry.from_json(raw, source=f"{source}: caches[{i}]")
            if e.name in entries:
                raise MirrorError(f"{source}: caches[{i}]: {e.name} is listed twice")
            entries[e.name] = e
        generated = doc.get("generated", "")
        return cls(tuple(entries[n] for n in sorted(entries)),
                   generated if isinstance(generated, str) else "")
