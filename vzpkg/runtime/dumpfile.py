"""A VE's dump file: CRIU's images in one tar file, with a manifest that names the
sha256 and size of every image.  (Or a dump directory: the same images and
``manifest.json`` side by side, which a migration copies and restores without
packing and unpacking them.)

``manifest.json`` is the first member; every other member is a regular file with a
plain name (no directories, links or devices) that the manifest lists.  Reading a
dump checks each image while it is extracted and refuses the whole dump when a
member is missing, extra, of another size or another sha256, or the file ends
early: nothing is restored from a dump that was changed or cut short.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tarfile
import time
from pathlib import Path
from typing import Any

from vzpkg.core.errors import RestoreError

FORMAT = 1
MANIFEST = "manifest.json"
_CHUNK = 1 << 20


def _hash(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def _manifest(images: Path, meta: dict[str, Any]) -> dict[str, Any]:
    files = {}
    for p in sorted(images.iterdir()):
        if p.is_file() and not p.is_symlink() and p.name != MANIFEST:
            size, digest = _hash(p)
            files[p.name] = {"size": size, "sha256": digest}
    return {"format": FORMAT, "created": int(time.time()), **meta, "files": files}


def seal_dir(images: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``manifest.json`` into the image directory *images* (a dump directory)."""
    manifest = _manifest(images, meta)
    tmp = images / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    tmp.chmod(0o600)
    os.replace(tmp, images / MANIFEST)
    return manifest


# what a restore (and a lazy one's daemon) writes beside the images
_OURS = {"restore.log", "init.pid", "lazy-pages.socket", "stats-restore"}


def check_dir(dump: Path) -> dict[str, Any]:
    """The manifest of the dump directory *dump*, once every image in it matches
    it; RestoreError if one is missing, extra, changed or cut short."""
    data = read_manifest(dump)
    files: dict[str, Any] = data["files"]
    for p in dump.iterdir():
        if p.name == MANIFEST or p.name in _OURS:
            continue
        if p.name not in files or p.is_symlink() or not p.is_file():
            raise _bad(dump, f"{p.name!r} is not one of its images")
    for name, want in files.items():
        p = dump / name
        if not p.is_file() or p.is_symlink():
            raise _bad(dump, f"image {name} is missing")
        size, digest = _hash(p)
        if size != want.get("size") or digest != want.get("sha256"):
            raise _bad(dump, f"image {name} does not match its sha256 in the manifest")
    return data


def pack(images: Path, out: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Write the images in directory *images* to the dump file *out* (through a
    temporary name, fsynced, then renamed); the manifest it wrote."""
    manifest = _manifest(images, meta)
    files = manifest["files"]
    raw = json.dumps(manifest, indent=1, sort_keys=True).encode()
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w|",
                                                   format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mode, info.mtime = len(raw), 0o600, manifest["created"]
            import io
            tar.addfile(info, io.BytesIO(raw))
            for name in files:
                tar.add(str(images / name), arcname=name, recursive=False)
            tar.close()
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return manifest


def _bad(dump: Path, why: str) -> RestoreError:
    return RestoreError(f"dump file {dump} is damaged or was changed: {why}; nothing "
                        "was restored", hint="take a new dump (vzctl chkpnt), or copy "
                                             "the dump file again")


def read_manifest(dump: Path) -> dict[str, Any]:
    """The manifest of *dump*, without checking the images."""
    if dump.is_dir():
        try:
            data: dict[str, Any] = json.loads((dump / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise _bad(dump, f"no readable {MANIFEST} ({exc})") from None
        if data.get("format") != FORMAT or not isinstance(data.get("files"), dict):
            raise _bad(dump, f"its manifest is not a format {FORMAT} vzpkg dump manifest")
        return data
    try:
        with tarfile.open(dump, mode="r|") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST or not first.isfile():
                raise _bad(dump, f"its first member is not {MANIFEST}")
            f = tar.extractfile(first)
            assert f is not None
            data = json.loads(f.read(1 << 22))
    except (tarfile.TarError, OSError, ValueError, EOFError) as exc:
        raise _bad(dump, str(exc)) from None
    if data.get("format") != FORMAT or not isinstance(data.get("files"), dict):
        raise _bad(dump, f"its manifest is not a format {FORMAT} vzpkg dump manifest")
    return data


def extract(dump: Path, into: Path) -> dict[str, Any]:
    """Check *dump* while extracting its images into the empty directory *into*; its
    manifest.  RestoreError, with *into* emptied again, if anything does not match.
    The images are readable to all (CRIU reads some of them as the VE's root; keep
    *into* in a directory only root can enter)."""
    try:
        return _extract(dump, into)
    except BaseException:
        for p in into.iterdir():
            with contextlib.suppress(OSError):
                p.unlink()
        raise


def _extract(dump: Path, into: Path) -> dict[str, Any]:
    seen: set[str] = set()
    try:
        with tarfile.open(dump, mode="r|") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST or not first.isfile():
                raise _bad(dump, f"its first member is not {MANIFEST}")
            mf = tar.extractfile(first)
            assert mf is not None
            manifest: dict[str, Any] = json.loads(mf.read(1 << 22))
            files = manifest.get("files")
            if manifest.get("format") != FORMAT or not isinstance(files, dict):
                raise _bad(dump, f"its manifest is not a format {FORMAT} vzpkg manifest")
            for m in tar:
                if m is first:      # (iterating starts again at the members read)
                    continue
                name = m.name
                if not m.isfile() or "/" in name or name in ("", ".", "..") \
                        or name not in files or name in seen:
                    raise _bad(dump, f"member {name!r} is not one of its images")
                src = tar.extractfile(m)
                assert src is not None
                h = hashlib.sha256()
                size = 0
                fd = os.open(into / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                             | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
                with os.fdopen(fd, "wb") as out:
                    while chunk := src.read(_CHUNK):
                        h.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
                want = files[name]
                if size != want.get("size") or h.hexdigest() != want.get("sha256"):
                    raise _bad(dump, f"image {name} does not match its sha256 in the "
                                     "manifest")
                seen.add(name)
    except (tarfile.TarError, OSError, ValueError, EOFError) as exc:
        raise _bad(dump, f"cannot read it ({exc})") from None
    missing = sorted(set(files) - seen)
    if missing:
        raise _bad(dump, f"it ends before image {missing[0]} (truncated?)")
    return manifest
