"""What the export formats share: the verified source cache, its decompressed
tar stream, and a reproducible rewrite of that stream into another tarball."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import lzma
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

from vzpkg.core.errors import StoreError
from vzpkg.store.manifest import Manifest

CHUNK = 1 << 20
XZ_PRESET = 6


def canonical_json(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


@dataclass
class Source:
    """One cache opened for export: its manifest, open tarball and path."""

    manifest: Manifest
    file: BinaryIO
    path: Path

    def verify(self) -> None:
        """The tarball's sha256 and size against the manifest; StoreError if damaged."""
        h = hashlib.sha256()
        n = 0
        self.file.seek(0)
        while chunk := self.file.read(CHUNK):
            h.update(chunk)
            n += len(chunk)
        m = self.manifest
        if h.hexdigest() != m.sha256 or n != m.size:
            raise StoreError(f"cache {m.name}: {self.path} does not match its manifest "
                             "(sha256 or size differ); nothing was exported",
                             hint=f"run 'vzpkg verify {m.name}'; rebuild, pull or "
                                  "re-import it")
        self.file.seek(0)

    @contextlib.contextmanager
    def tar_stream(self) -> Iterator[IO[bytes]]:
        """The cache's uncompressed tar, as a stream read front to back."""
        comp = self.manifest.compression
        self.file.seek(0)
        if comp == "gzip":
            with gzip.GzipFile(fileobj=self.file, mode="rb") as g:
                yield g                               # type: ignore[misc]
        elif comp == "xz":
            with lzma.LZMAFile(self.file, "rb") as x:
                yield x
        elif comp == "zstd":
            zstd = shutil.which("zstd")
            if zstd is None:
                raise StoreError("zstd is not installed; it is needed to read "
                                 f"{self.path.name}", hint="apt install zstd")
            proc = subprocess.Popen([zstd, "-dcq"], stdin=self.file, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
            assert proc.stdout is not None and proc.stderr is not None
            try:
                yield proc.stdout
                proc.stdout.read()                    # drain what the reader left
            finally:
                proc.stdout.close()
                err = proc.stderr.read().decode(errors="replace").strip()
                proc.stderr.close()
                if proc.wait() != 0:
                    raise StoreError(f"cannot decompress {self.path}: {err or 'zstd failed'}",
                                     hint=f"run 'vzpkg verify {self.manifest.name}'")
        else:
            raise StoreError(f"cache {self.manifest.name}: unknown compression {comp!r}")


class HashingReader:
    """Reads through *raw*, hashing and counting every byte."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.hash.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


def xz_writer(path: Path) -> lzma.LZMAFile:
    """A deterministic .xz writer (one thread, fixed preset, CRC64, as xz(1) does)."""
    return lzma.LZMAFile(path, "wb", format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64,
                         preset=XZ_PRESET)


def gzip_writer(fileobj: IO[bytes]) -> gzip.GzipFile:
    """A deterministic gzip writer: no file name, mtime 0."""
    return gzip.GzipFile(filename="", fileobj=fileobj, mode="wb", compresslevel=6, mtime=0)


def regular_file(name: str, data: bytes, mtime: int, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = mtime
    info.mode = mode
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def directory(name: str, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mtime = mtime
    info.mode = 0o755
    info.uname = info.gname = ""
    return info


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    import io
    tar.addfile(regular_file(name, data, mtime), io.BytesIO(data))


Rewrite = Callable[[tarfile.TarInfo], bytes | None]


def copy_entries(src: IO[bytes], out: tarfile.TarFile, *, prefix: str = "",
                 replace: dict[str, Rewrite] | None = None) -> int:
    """Copy every entry of the tar stream *src* into *out*, its path under *prefix*.

    Owners, modes, times, xattrs (pax records) and link targets are kept; a hard
    link's target moves under *prefix* too, a symlink's does not.  *replace* maps
    a path (without ``./``) to a function giving new contents for that file (or
    None to keep it).  Returns the number of entries.
    """
    replace = replace or {}
    n = 0
    with tarfile.open(fileobj=src, mode="r|", format=tarfile.PAX_FORMAT) as tin:
        for info in tin:
            rel = _relative(info.name)
            if prefix:
                info.name = f"{prefix}{rel}".rstrip("/")
                if info.islnk():
                    info.linkname = f"{prefix}{_relative(info.linkname)}"
            for key in ("path", "linkpath"):      # tarfile would write the old ones back
                info.pax_headers.pop(key, None)   # type: ignore[attr-defined]
            n += 1
            if info.isreg():
                fn = replace.get(rel)
                new = fn(info) if fn is not None else None
                if new is not None:
                    import io
                    info.size = len(new)
                    out.addfile(info, io.BytesIO(new))
                    continue
                out.addfile(info, tin.extractfile(info))
            else:
                out.addfile(info)
    return n


def _relative(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return "" if name in (".", "./") else name.lstrip("/")
