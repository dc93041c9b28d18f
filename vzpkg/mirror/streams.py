"""A simplestreams index beside ``index.json``, for LXC/Incus/LXD clients.

``streams/v1/index.json`` (format ``index:1.0``) points at
``streams/v1/images.json`` (``products:1.0``, datatype ``image-downloads``),
which lists each published cache as a product ``<os>:<release>:<arch>:<set>``
(aliases ``<os>/<release>/<set>``, and ``<os>/<release>`` for the default set)
with one version (named ``YYYYMMDD_HH:MM`` from the cache's creation time, the
form these clients parse).  Each version is a split image:

* ``incus.tar.xz`` / ``lxd.tar.xz``: the metadata tarball
  (``caches/<name>/<serial>/<name>.incus.tar.xz``: metadata.yaml and the
  hostname template, made from the manifest), with
  ``combined_rootxz_sha256``, the sha256 of the metadata tarball followed by the
  rootfs, which these clients use as the image's fingerprint;
* ``root.tar.xz``: the cache tarball itself (the clients detect its
  compression from its bytes; no second copy of the tree is stored).

Both files are signed like ``index.json`` (a detached ``.asc`` beside each),
and written before ``index.json``; every path in them is a file already in
the tree.  A client of the stream trusts its transport (https); ``vzpkg pull``
keeps checking the signed ``index.json``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vzpkg.mirror.index import Index, IndexEntry

STREAMS_INDEX = "streams/v1/index.json"
STREAMS_IMAGES = "streams/v1/images.json"
DEFAULT_SET = "minimal"
GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "i386": "i386", "i686": "i386",
          "armv7l": "armhf", "ppc64le": "ppc64el", "s390x": "s390x", "riscv64": "riscv64"}


@dataclass(frozen=True)
class StreamItem:
    """The metadata tarball of one published cache and the combined fingerprint."""

    sha256: str          # the cache tarball's, to tell when the item is stale
    meta_path: str
    meta_size: int
    meta_sha256: str
    combined_sha256: str


def meta_rel(e_tarball: str, name: str) -> str:
    return f"{e_tarball.rpartition('/')[0]}/{name}.incus.tar.xz"


def combined_sha256(meta: bytes, tarball: Path) -> str:
    h = hashlib.sha256(meta)
    with tarball.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def item_for(e: IndexEntry, meta: bytes, combined: str) -> StreamItem:
    return StreamItem(e.sha256, meta_rel(e.tarball, e.name), len(meta),
                      hashlib.sha256(meta).hexdigest(), combined)


def _version_name(created: str) -> str:
    when = datetime.fromisoformat(created.replace("Z", "+00:00"))
    return when.astimezone(UTC).strftime("%Y%m%d_%H:%M")


def product_id(e: IndexEntry) -> str:
    return f"{e.distribution}:{e.release}:{GOARCH.get(e.arch, e.arch)}:{e.set_name}"


def read_items(images: bytes | None) -> dict[str, StreamItem]:
    """The items of an earlier images.json by cache name (what can be reused)."""
    if not images:
        return {}
    try:
        doc = json.loads(images)
        out: dict[str, StreamItem] = {}
        for product in doc.get("products", {}).values():
            name = product.get("vzpkg_name")
            for version in product.get("versions", {}).values():
                meta = version["items"]["incus.tar.xz"]
                root = version["items"]["root.tar.xz"]
                out[name] = StreamItem(root["sha256"], meta["path"], int(meta["size"]),
                                       meta["sha256"], meta["combined_rootxz_sha256"])
        return out
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}                      # unreadable: every item is made again


def render(index: Index, items: Mapping[str, StreamItem]) -> dict[str, bytes]:
    """streams/v1/index.json and images.json for the caches *index* names."""
    updated = _rfc2822(index.generated or "1970-01-01T00:00:00Z")
    products: dict[str, Any] = {}
    for e in index.entries:
        it = items.get(e.name)
        if it is None or it.sha256 != e.sha256:
            continue
        aliases = [f"{e.distribution}/{e.release}/{e.set_name}"]
        if e.set_name == DEFAULT_SET:
            aliases.append(f"{e.distribution}/{e.release}")
        meta = {"path": it.meta_path, "size": it.meta_size, "sha256": it.meta_sha256,
                "combined_rootxz_sha256": it.combined_sha256}
        products[product_id(e)] = {
            "aliases": ",".join(aliases),
            "arch": GOARCH.get(e.arch, e.arch),
            "os": e.distribution,
            "release": e.release,
            "release_title": e.release,
            "variant": e.set_name,
            "vzpkg_name": e.name,
            "versions": {_version_name(e.created or index.generated or
                                       "1970-01-01T00:00:00Z"): {
                "vzpkg_serial": e.serial,
                "items": {
                    "incus.tar.xz": {"ftype": "incus.tar.xz", **meta},
                    "lxd.tar.xz": {"ftype": "lxd.tar.xz", **meta},
                    "root.tar.xz": {"ftype": "root.tar.xz", "path": e.tarball,
                                    "size": e.size, "sha256": e.sha256},
                }}},
        }
    images = {"content_id": "images", "datatype": "image-downloads",
              "format": "products:1.0", "updated": updated, "products": products}
    idx = {"format": "index:1.0", "updated": updated,
           "index": {"images": {"datatype": "image-downloads", "format": "products:1.0",
                                "path": STREAMS_IMAGES, "updated": updated,
                                "products": sorted(products)}}}
    return {STREAMS_INDEX: _dump(idx), STREAMS_IMAGES: _dump(images)}


def _rfc2822(iso: str) -> str:
    """e.g. "Sat, 05 Dec 2026 12:00:00 +0000" (no locale, no email package)."""
    t = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(UTC)
    day = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")[t.weekday()]
    month = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
             "Dec")[t.month - 1]
    return f"{day}, {t.day:02d} {month} {t.year} {t:%H:%M:%S} +0000"


def _dump(doc: Any) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
