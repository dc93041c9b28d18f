"""The safety rules every archive entry must pass before it is unpacked.

An archive is unpacked into an empty directory, so everything on disk below it
was put there by earlier entries of the same archive; :class:`Policy` remembers
the type of each of them and refuses an entry when:

* its name is absolute or has a ``..`` component;
* a directory above it is a symlink (or not a directory) made by an earlier
  entry, i.e. it would be written *through* a symlink;
* it would replace an earlier entry of another type (a symlink over a
  directory, a directory over a symlink, ...);
* it is a hard link whose target is absolute, has ``..``, is not an earlier
  entry of this archive, or is a directory or a symlink;
* it is a block device, or a character device other than the standard set
  (null, zero, full, random, urandom, tty, console, ptmx, checked by
  major:minor);
* it is of a kind tar cannot describe safely (sockets, unknown types);
* it carries overlayfs metadata (``trusted.overlay.*`` xattrs): an unpacked
  cache serves as an overlayfs lower layer, where such attributes would
  redirect lookups or hide files.

Symlinks themselves may point anywhere: they are resolved inside the VE later
and nothing during unpacking follows one.
"""

from __future__ import annotations

from vzpkg.archive._lib import (
    AE_IFBLK,
    AE_IFCHR,
    AE_IFDIR,
    AE_IFIFO,
    AE_IFLNK,
    AE_IFREG,
)
from vzpkg.core.errors import UnsafeArchiveError

# (major, minor) -> name, for character devices only
STANDARD_DEVICES: dict[tuple[int, int], str] = {
    (1, 3): "null", (1, 5): "zero", (1, 7): "full", (1, 8): "random", (1, 9): "urandom",
    (5, 0): "tty", (5, 1): "console", (5, 2): "ptmx",
}
_KIND = {AE_IFREG: "file", AE_IFDIR: "directory", AE_IFLNK: "symlink", AE_IFCHR: "device",
         AE_IFBLK: "block device", AE_IFIFO: "fifo"}


def display(name: bytes) -> str:
    """An entry name as text for messages (undecodable bytes as \\xNN)."""
    return name.decode("utf-8", "backslashreplace")


def normalize(raw: bytes) -> bytes:
    """The entry name relative to the archive root, '' for the root itself.
    Raises UnsafeArchiveError for absolute names and '..' components."""
    # fast path for the usual './usr/bin/x' or 'usr/bin/x' forms
    s = b"/" + (raw[2:] if raw.startswith(b"./") else raw).rstrip(b"/")
    if b"/." not in s and b"//" not in s:
        return s[1:]
    if raw.startswith(b"/"):
        raise UnsafeArchiveError(display(raw), "absolute path")
    parts = [p for p in raw.split(b"/") if p and p != b"."]
    if b".." in parts:
        raise UnsafeArchiveError(display(raw), "path has a '..' component")
    return b"/".join(parts)


class Policy:
    """Checks entries in archive order; :meth:`check` raises or records."""

    __slots__ = ("kinds",)

    def __init__(self) -> None:
        self.kinds: dict[bytes, int] = {b"": AE_IFDIR}

    def check(self, raw: bytes | None, ftype: int, hardlink: bytes | None,
              rdev: tuple[int, int] | None = None) -> None:
        if not raw:
            raise UnsafeArchiveError("", "entry has no name")
        name = normalize(raw)
        kinds = self.kinds
        if hardlink is not None:
            self._hardlink(raw, hardlink)
            ftype = kinds[normalize(hardlink)]
        elif ftype == AE_IFCHR:
            if rdev is None or rdev not in STANDARD_DEVICES:
                major, minor = rdev or (0, 0)
                raise UnsafeArchiveError(
                    display(raw), f"character device {major}:{minor} is not one of the "
                    "standard devices (null, zero, full, random, urandom, tty, console, ptmx)")
        elif ftype not in (AE_IFREG, AE_IFDIR, AE_IFLNK, AE_IFIFO):
            kind = "block device" if ftype == AE_IFBLK else f"entry of type {ftype:o}"
            raise UnsafeArchiveError(display(raw), f"{kind} not allowed in a VE tree")
        parent, _, _ = name.rpartition(b"/")
        if kinds.get(parent) != AE_IFDIR:
            self._parents(raw, name)
        old = kinds.get(name)
        if old is not None and old != ftype:
            raise UnsafeArchiveError(
                display(raw), f"would replace an earlier {_KIND.get(old, 'entry')} "
                f"with a {_KIND.get(ftype, 'entry')}")
        kinds[name] = ftype

    def _parents(self, raw: bytes, name: bytes) -> None:
        kinds = self.kinds
        parts = name.split(b"/")
        for i in range(1, len(parts)):
            prefix = b"/".join(parts[:i])
            kind = kinds.get(prefix)
            if kind is None:
                kinds[prefix] = AE_IFDIR          # libarchive creates it as a directory
            elif kind == AE_IFLNK:
                raise UnsafeArchiveError(
                    display(raw), f"would be written through the symlink {display(prefix)!r}")
            elif kind != AE_IFDIR:
                raise UnsafeArchiveError(
                    display(raw), f"{display(prefix)!r} above it is not a directory")

    def _hardlink(self, raw: bytes, target: bytes) -> None:
        try:
            tname = normalize(target)
        except UnsafeArchiveError as exc:
            raise UnsafeArchiveError(
                display(raw), f"hard link target {display(target)!r} is outside the tree "
                f"({exc.reason})") from None
        kind = self.kinds.get(tname)
        if kind is None:
            raise UnsafeArchiveError(
                display(raw), f"hard link target {display(target)!r} is not an earlier entry "
                "of this archive")
        if kind in (AE_IFDIR, AE_IFLNK):
            raise UnsafeArchiveError(display(raw), f"hard link to the {_KIND[kind]} "
                                     f"{display(target)!r}")


def check_xattrs(raw: bytes | None, names: list[bytes]) -> None:
    """Refuse overlayfs metadata; every other extended attribute is kept."""
    for n in names:
        if n.startswith(b"trusted.overlay."):
            raise UnsafeArchiveError(display(raw or b"?"),
                                     f"overlayfs attribute {display(n)!r} not allowed")
