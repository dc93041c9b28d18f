"""LXC and Incus images from a cache, written as reproducible tarballs.

**LXC** (what ``lxc-create -t local -- --metadata meta.tar.xz --fstree
rootfs.tar.xz`` reads): ``rootfs.tar.xz`` is the cache's tree with
``/etc/hostname`` holding ``LXC_NAME``; ``meta.tar.xz`` holds ``config`` (the
distribution's part of the container config: common.conf, the architecture),
``config-user`` (the same plus userns.conf, for unprivileged containers),
``templates`` (the files in which lxc-local replaces ``LXC_NAME`` with the
container's name), ``excludes-user`` (device nodes an unprivileged user cannot
create) and ``create-message``.

**Incus** unified image: one tarball with ``metadata.yaml`` (architecture,
creation date, properties, templates), ``templates/hostname.tpl`` and the tree
under ``rootfs/`` (Incus' image format documentation, "Unified tarball").
"""

from __future__ import annotations

import contextlib
import hashlib
import tarfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from vzpkg.store.export.common import (
    Rewrite,
    Source,
    add_bytes,
    copy_entries,
    directory,
    xz_writer,
)
from vzpkg.store.manifest import Manifest

LXC_ARCH = {"x86_64": "x86_64", "aarch64": "aarch64", "i386": "i686", "i686": "i686",
            "armv7l": "armhf", "armhf": "armhf", "ppc64le": "ppc64le", "s390x": "s390x",
            "riscv64": "riscv64"}
HOSTNAME_FILES = ("etc/hostname",)


def _epoch(m: Manifest) -> int:
    return int(datetime.fromisoformat(m.created.replace("Z", "+00:00")).timestamp())


def _hostname(placeholder: str) -> dict[str, Rewrite]:
    data = (placeholder + "\n").encode()
    return {path: (lambda _info: data) for path in HOSTNAME_FILES}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _tar(path: Path) -> Iterator[tarfile.TarFile]:
    """A pax tar stream into a new .xz file, complete (and closed) on leaving."""
    with xz_writer(path) as xz, tarfile.open(fileobj=xz, mode="w|",
                                             format=tarfile.PAX_FORMAT) as tar:
        yield tar


def write_lxc(src: Source, out: Path) -> tuple[str, tuple[str, ...]]:
    """``rootfs.tar.xz`` and ``meta.tar.xz`` in the new directory *out*."""
    m = src.manifest
    when = m.source_date or _epoch(m)
    out.mkdir(parents=True, exist_ok=True)
    rootfs = out / "rootfs.tar.xz"
    with _tar(rootfs) as tar, src.tar_stream() as raw:
        copy_entries(raw, tar, replace=_hostname("LXC_NAME"))
    arch = LXC_ARCH.get(m.arch, m.arch)
    config = ("lxc.include = LXC_TEMPLATE_CONFIG/common.conf\n"
              f"lxc.arch = {arch}\n")
    meta = {
        "config": config,
        "config-user": config + "lxc.include = LXC_TEMPLATE_CONFIG/userns.conf\n",
        "templates": "".join(f"/{p}\n" for p in HOSTNAME_FILES),
        "excludes-user": "./dev/*\ndev/*\n",
        "expiry": "0\n",
        "create-message": f"{m.name} serial {m.serial}, exported from a vzpkg cache "
                          f"(sha256 {m.sha256}).\n",
    }
    with _tar(out / "meta.tar.xz") as tar:
        for name in sorted(meta):
            add_bytes(tar, name, meta[name].encode(), when)
    return _sha256(rootfs), ("meta.tar.xz", "rootfs.tar.xz")


def incus_metadata(m: Manifest) -> dict[str, object]:
    return {
        "architecture": m.arch,
        "creation_date": _epoch(m),
        "properties": {
            "architecture": m.arch,
            "description": f"{m.distribution} {m.release} {m.arch} ({m.set_name}), "
                           f"vzpkg serial {m.serial}",
            "name": m.name,
            "os": m.distribution,
            "release": m.release,
            "serial": str(m.serial),
            "variant": m.set_name,
        },
        "templates": {
            f"/{p}": {"when": ["create", "copy"], "create_only": False,
                      "template": "hostname.tpl", "properties": {}}
            for p in HOSTNAME_FILES
        },
    }


def _metadata_entries(tar: tarfile.TarFile, m: Manifest) -> None:
    import yaml
    when = m.source_date or _epoch(m)
    add_bytes(tar, "metadata.yaml",
              yaml.safe_dump(incus_metadata(m), sort_keys=True).encode(), when)
    tar.addfile(directory("templates", when))
    add_bytes(tar, "templates/hostname.tpl", b"{{ instance.name }}\n", when)


def incus_metadata_tarball(m: Manifest) -> bytes:
    """The metadata half of a split Incus image (``incus.tar.xz``): metadata.yaml
    and the hostname template; a function of the manifest alone."""
    import io
    import lzma
    buf = io.BytesIO()
    with lzma.LZMAFile(buf, "wb", format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64) as xz, \
            tarfile.open(fileobj=xz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        _metadata_entries(tar, m)
    return buf.getvalue()


def write_incus(src: Source, out: Path) -> tuple[str, tuple[str, ...]]:
    """The unified tarball (xz) at the new file *out*."""
    with _tar(out) as tar:
        _metadata_entries(tar, src.manifest)
        with src.tar_stream() as raw:
            copy_entries(raw, tar, prefix="rootfs/")
    return _sha256(out), (out.name,)
