"""``vzpkg export``: a cache as an image other engines run.

Three formats, each written from the cache's own tarball (no tree on disk):

* ``oci``   an OCI image layout directory (:mod:`.oci`), one layer;
* ``lxc``   a directory with ``rootfs.tar.xz`` and ``meta.tar.xz`` for
  ``lxc-create -t local`` (:mod:`.lxc`);
* ``incus`` an Incus unified image tarball (``metadata.yaml``, ``templates/``,
  ``rootfs/``) for ``incus image import`` (:mod:`.lxc`).

Every export is reproducible: the same cache gives the same bytes (file times
are the cache's source date, JSON is canonical, compressors run single-threaded
with fixed settings).  The destination must not exist; the export is written to
a temporary sibling and renamed into place without replacing anything, so an
interrupted or failed export leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vzpkg.core.errors import StoreError
from vzpkg.store.cachestore import CacheStore
from vzpkg.store.export.common import Source
from vzpkg.store.manifest import Manifest, expand_name

FORMATS = ("oci", "lxc", "incus")
OCI_LAYERS = ("cache", "gzip")


@dataclass(frozen=True)
class ExportReport:
    name: str
    serial: int
    format: str
    dest: Path
    digest: str          # oci: the image manifest's digest; else the sha256 of the main file
    files: tuple[str, ...]


def _rename_noreplace(src: Path, dest: Path) -> None:
    """rename(2) that fails with EEXIST instead of replacing *dest*."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    at_fdcwd, rename_noreplace = -100, 1
    if renameat2 is not None:
        if renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dest),
                     rename_noreplace) == 0:
            return
        err = ctypes.get_errno()
        if err not in (22, 38):           # EINVAL, ENOSYS: the file system cannot
            raise OSError(err, os.strerror(err), str(dest))
    if os.path.lexists(dest):
        raise FileExistsError(17, os.strerror(17), str(dest))
    os.rename(src, dest)


@contextlib.contextmanager
def _staged(dest: Path, *, directory: bool) -> Iterator[Path]:
    """A temporary sibling of *dest*, renamed to it on success, removed otherwise."""
    if os.path.lexists(dest):
        raise StoreError(f"export destination {dest} already exists; nothing was written",
                         hint="choose a new path, or remove the old export first")
    parent = dest.parent
    if not parent.is_dir():
        raise StoreError(f"export destination {dest}: directory {parent} does not exist",
                         hint=f"create it first (mkdir -p {parent})")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=parent))
    try:
        out = tmp if directory else tmp / dest.name
        yield out
        final = tmp if directory else out
        for p in [final, *(final.rglob("*") if directory else ())]:
            if p.is_file():
                with p.open("rb") as f:
                    os.fsync(f.fileno())
        os.chmod(tmp, 0o755)
        try:
            _rename_noreplace(final, dest)
        except FileExistsError:
            raise StoreError(f"export destination {dest} appeared while exporting; "
                             "it was left as it is", hint="choose a new path") from None
        with contextlib.suppress(OSError):
            fd = os.open(parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def export(store: CacheStore, name: str, fmt: str, dest: Path, *,
           cmd: tuple[str, ...] | None = None, oci_layer: str = "cache") -> ExportReport:
    """Write cache *name* from *store* as *fmt* at *dest* (which must not exist)."""
    if oci_layer not in OCI_LAYERS:
        raise StoreError(f"unknown OCI layer choice {oci_layer!r}",
                         hint=f"choose one of {', '.join(OCI_LAYERS)}")
    if fmt not in FORMATS:
        raise StoreError(f"unknown export format {fmt!r}",
                         hint=f"choose one of {', '.join(FORMATS)}")
    full = expand_name(name)
    if os.path.lexists(dest):
        raise StoreError(f"export destination {dest} already exists; nothing was written",
                         hint="choose a new path, or remove the old export first")
    with store.open_cache(full) as (m, f):
        src = Source(m, f, store.dir / m.tarball)
        src.verify()
        writer = _writer(fmt, cmd, oci_layer)
        with _staged(dest, directory=fmt != "incus") as out:
            digest, files = writer(src, out)
    return ExportReport(m.name, m.serial, fmt, dest, digest, files)


def _writer(fmt: str, cmd: tuple[str, ...] | None, oci_layer: str
            ) -> Callable[[Source, Path], tuple[str, tuple[str, ...]]]:
    if fmt == "oci":
        from vzpkg.store.export import oci
        return lambda src, out: oci.write(src, out, cmd=cmd, layer=oci_layer)
    from vzpkg.store.export import lxc
    return lxc.write_lxc if fmt == "lxc" else lxc.write_incus


__all__ = ["FORMATS", "ExportReport", "Manifest", "export"]
