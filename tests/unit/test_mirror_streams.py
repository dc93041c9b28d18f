"""The simplestreams index a published tree carries for LXC/Incus clients, read over
HTTP the way such a client walks it: index -> products -> items, every item fetched
and checked against its size and sha256, the fingerprint recomputed, signatures
verified.  (No Incus or LXD is packaged for Debian 12, so the client's walk is done
here by the test, after the simplestreams format.)"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import re
import tarfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.mirror_helpers import Keys, MirrorServer, make_cache, make_keys, publish_tree
from vzpkg.core.gpg import Keyring

NAME = "test-1-x86_64-minimal"
OTHER = "test-2-x86_64-default"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    k = make_keys(tmp_path_factory.mktemp("keys"))
    yield k
    k.close()


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        data: bytes = r.read()
        return data


def verified(base: str, rel: str, keys: Keys) -> Any:
    data, sig = get(base + rel), get(base + rel + ".asc")
    with Keyring() as kr:
        kr.import_pinned(keys.pub.read_text(), keys.fpr, source=str(keys.pub))
        kr.verify_data(sig, data, [keys.fpr], what=rel)
    return json.loads(data)


def walk(base: str, keys: Keys) -> dict[str, Any]:
    """product id -> (product, its one version), every item checked."""
    index = verified(base, "streams/v1/index.json", keys)
    assert index["format"] == "index:1.0"
    images_ref = index["index"]["images"]
    assert images_ref["datatype"] == "image-downloads"
    images = verified(base, images_ref["path"], keys)
    assert images["format"] == "products:1.0"
    assert sorted(images["products"]) == images_ref["products"]
    out = {}
    for pid, product in images["products"].items():
        (vname, version), = product["versions"].items()
        assert re.fullmatch(r"\d{8}_\d\d:\d\d", vname)     # the form clients parse
        blobs = {}
        for key, item in version["items"].items():
            assert item["ftype"] == key
            blob = get(base + item["path"])
            assert len(blob) == item["size"]
            assert hashlib.sha256(blob).hexdigest() == item["sha256"]
            blobs[key] = blob
        meta, root = version["items"]["incus.tar.xz"], blobs["root.tar.xz"]
        assert meta["combined_rootxz_sha256"] == \
            hashlib.sha256(blobs["incus.tar.xz"] + root).hexdigest()
        out[pid] = (product, blobs)
    return out


def test_stream_lists_every_cache_with_checked_items(tmp_path: Path, keys: Keys) -> None:
    src, tree = tmp_path / "src", tmp_path / "tree"
    m = make_cache(src, NAME, 200_000, seed=1)
    make_cache(src, OTHER, 100_000, seed=2)
    publish_tree(src, tree, keys)
    with MirrorServer(tree) as srv:
        got = walk(srv.url, keys)
    assert set(got) == {"test:1:amd64:minimal", "test:2:amd64:default"}
    product, blobs = got["test:1:amd64:minimal"]
    assert product["aliases"].split(",") == ["test/1/minimal", "test/1"]
    assert (product["os"], product["release"], product["variant"]) == ("test", "1", "minimal")
    assert blobs["root.tar.xz"] == (src / m.tarball).read_bytes()   # the cache itself
    with tarfile.open(fileobj=io.BytesIO(lzma.decompress(blobs["incus.tar.xz"]))) as t:
        f = t.extractfile("metadata.yaml")
        assert f is not None
        meta = yaml.safe_load(f.read())
    assert meta["architecture"] == "x86_64" and meta["properties"]["name"] == NAME


def test_a_new_serial_replaces_the_version_and_old_trees_get_streams(tmp_path: Path,
                                                                    keys: Keys) -> None:
    src, tree = tmp_path / "src", tmp_path / "tree"
    make_cache(src, NAME, 50_000, seed=1)
    publish_tree(src, tree, keys)
    newer = make_cache(src, NAME, 50_000, seed=3)
    publish_tree(src, tree, keys)
    with MirrorServer(tree) as srv:
        (product, blobs), = walk(srv.url, keys).values()
    (version,) = product["versions"].values()
    assert version["vzpkg_serial"] == 2
    assert hashlib.sha256(blobs["root.tar.xz"]).hexdigest() == newer.sha256
    # a tree from before the streams existed gets them at the next publish
    for p in (tree / "streams").rglob("*"):
        if p.is_file():
            p.unlink()
    publish_tree(src, tree, keys)
    with MirrorServer(tree) as srv:
        assert list(walk(srv.url, keys)) == ["test:1:amd64:minimal"]
