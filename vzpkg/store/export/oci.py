"""An OCI image layout (image-spec v1.1) with one layer: the cache itself.

The layer blob is the cache tarball's own bytes when the OCI spec has a media
type for its compression (``tar+zstd``, ``tar+gzip``; zstd layers are read by
podman/skopeo (containers/image), containerd and Docker 23+), so the layer
digest is the cache's sha256.  An xz cache (no OCI media type) is recompressed
to gzip, deterministically (no name, mtime 0, level 6); so is any cache with
``layer="gzip"``, for tools that read no zstd layers (umoci 0.4, Docker before
23, containerd before 1.5).  The config's
``diff_ids`` is the sha256 of the uncompressed tar; its default command is
``/sbin/init`` when the tree has one (podman then runs it in systemd mode),
else ``/bin/sh``.  Everything else is derived from the manifest, so the image
digest is a function of the cache alone.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from vzpkg.store.export.common import (
    CHUNK,
    HashingReader,
    Source,
    canonical_json,
    gzip_writer,
)

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = {"zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
            "gzip": "application/vnd.oci.image.layer.v1.tar+gzip"}
GOARCH = {"x86_64": ("amd64", ""), "aarch64": ("arm64", "v8"), "i386": ("386", ""),
          "i686": ("386", ""), "armv7l": ("arm", "v7"), "armhf": ("arm", "v7"),
          "ppc64le": ("ppc64le", ""), "s390x": ("s390x", ""), "riscv64": ("riscv64", "")}
INITS = ("sbin/init", "usr/sbin/init")
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def platform(arch: str) -> dict[str, str]:
    goarch, variant = GOARCH.get(arch, (arch, ""))
    out = {"architecture": goarch, "os": "linux"}
    if variant:
        out["variant"] = variant
    return out


class _Blobs:
    def __init__(self, root: Path) -> None:
        self.dir = root / "blobs" / "sha256"
        self.dir.mkdir(parents=True)

    def put(self, data: bytes, media_type: str) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (self.dir / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def _layer(src: Source, blobs: _Blobs, layer: str
           ) -> tuple[dict[str, object], str, set[str]]:
    """Write the layer blob; (descriptor, diff_id, the tree's paths of interest)."""
    comp = src.manifest.compression
    tmp = blobs.dir / ".layer.tmp"
    found: set[str] = set()
    if comp in MT_LAYER and layer == "cache":
        # the blob is the cache file itself (its sha256 was verified just before)
        src.file.seek(0)
        with tmp.open("wb") as out:
            while chunk := src.file.read(CHUNK):
                out.write(chunk)
        digest, size, mt = src.manifest.sha256, src.manifest.size, MT_LAYER[comp]
        with src.tar_stream() as raw:
            tar_reader = HashingReader(raw)
            _scan(tar_reader, found)
    else:
        blob_hash = hashlib.sha256()
        with src.tar_stream() as raw, tmp.open("wb") as out:
            tar_reader = HashingReader(raw)

            class _Tee:
                def write(self, b: bytes) -> int:
                    blob_hash.update(b)
                    return out.write(b)

                def flush(self) -> None:
                    out.flush()

            with gzip_writer(_Tee()) as gz:          # type: ignore[arg-type]
                _scan(_TeeReader(tar_reader, gz.write), found)
        digest, size, mt = blob_hash.hexdigest(), tmp.stat().st_size, MT_LAYER["gzip"]
    os.replace(tmp, blobs.dir / digest)
    desc: dict[str, object] = {"mediaType": mt, "digest": f"sha256:{digest}", "size": size}
    return desc, f"sha256:{tar_reader.hash.hexdigest()}", found


class _TeeReader:
    def __init__(self, inner: HashingReader, sink: Callable[[bytes], object]) -> None:
        self.inner = inner
        self.sink = sink

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n)
        if data:
            self.sink(data)
        return data


class _Readable(Protocol):
    def read(self, n: int = -1) -> bytes: ...


def _scan(reader: _Readable, found: set[str]) -> None:
    """Walk the tar (headers only), noting the init programs; read it to the end."""
    with tarfile.open(fileobj=reader, mode="r|") as tar:   # type: ignore[call-overload]
        for info in tar:
            name = info.name.removeprefix("./")
            if name in INITS and (info.isreg() or info.issym() or info.islnk()):
                found.add(name)
    while reader.read(CHUNK):
        pass


def write(src: Source, out: Path, *, cmd: tuple[str, ...] | None = None,
          layer: str = "cache") -> tuple[str, tuple[str, ...]]:
    """Write the layout into the new directory *out*; (manifest digest, files)."""
    m = src.manifest
    out.mkdir(parents=True, exist_ok=True)
    blobs = _Blobs(out)
    layer_desc, diff_id, found = _layer(src, blobs, layer)
    if cmd is None:
        cmd = ("/" + next(i for i in INITS if i in found),) if found else ("/bin/sh",)
    plat = platform(m.arch)
    labels = {"org.opencontainers.image.title": m.name,
              "org.opencontainers.image.version": str(m.serial),
              "org.opencontainers.image.created": m.created,
              "vzpkg.cache.sha256": m.sha256}
    config = {
        **plat, "created": m.created,
        "config": {"Cmd": list(cmd), "Env": [DEFAULT_PATH], "Labels": labels},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": m.created,
                     "created_by": f"vzpkg build {m.name} (serial {m.serial})"}],
    }
    config_desc = blobs.put(canonical_json(config), MT_CONFIG)
    manifest = {"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": config_desc,
                "layers": [layer_desc], "annotations": labels}
    manifest_desc = blobs.put(canonical_json(manifest), MT_MANIFEST)
    index = {"schemaVersion": 2, "mediaType": MT_INDEX,
             "manifests": [{**manifest_desc, "platform": plat,
                            "annotations": {"org.opencontainers.image.ref.name": m.name}}]}
    (out / "index.json").write_bytes(canonical_json(index))
    (out / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    return str(manifest_desc["digest"]), tuple(files)
