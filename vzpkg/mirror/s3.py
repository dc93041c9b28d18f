"""``vzpkg publish s3://bucket/prefix``: the signed tree in an S3 bucket (boto3).

The objects are the static tree's files under *prefix*, with the same
guarantees, kept by the object store's conditional writes instead of renames:

* a cache's objects (tarball, its signature, manifest) are written with
  ``If-None-Match: *``: an object, once there, is never replaced, so an index
  can never come to name bytes other than those it was made for; an object
  already there from an earlier or concurrent run is accepted only when its
  ``sha256`` (kept as object metadata) is the one wanted;
* ``index.json`` is written last, after every object it names, with
  ``If-Match`` on the ETag read at the start (``If-None-Match: *`` when there
  was none): when another publisher wrote it in between, the write fails, and
  the index is read again, merged and written again, so no publisher's entries
  are lost and no index ever names an object that is not there;
* its signature ``index.json.asc`` is written right after it (two objects
  cannot change at once; a reader who sees them out of step reads again, as for
  the static tree; a publisher that lost the race waits for the winner's
  signature before it merges, so it never signs an index it has not verified);
* a remote index that is not valid or does not match its signature (a
  half-written upload, say) is refused before anything is written;
* the simplestreams files (:mod:`vzpkg.mirror.streams`) are written, signed,
  just before the index;
* when nothing changed, nothing is written.

Credentials and region come from the standard AWS sources (environment,
``~/.aws``); the endpoint of an S3-compatible store from ``AWS_ENDPOINT_URL``
(or ``AWS_ENDPOINT_URL_S3``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vzpkg.core.errors import GpgError, MirrorError
from vzpkg.core.gpg import Keyring
from vzpkg.mirror.index import INDEX_NAME, INDEX_SIG_NAME, Index, IndexEntry
from vzpkg.mirror.publisher import (
    Published,
    PublishReport,
    _from_store,
    _now,
    check_secret_key,
    merge_sources,
    refuse_older,
)
from vzpkg.mirror.streams import (
    STREAMS_IMAGES,
    STREAMS_INDEX,
    StreamItem,
    combined_sha256,
    item_for,
    read_items,
    render,
)
from vzpkg.store.cachestore import CacheStore
from vzpkg.store.manifest import Manifest

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ATTEMPTS = 5
META_SHA = "sha256"


@dataclass(frozen=True)
class S3Url:
    bucket: str
    prefix: str          # "" or ending in "/"

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def parse_s3_url(url: str) -> S3Url:
    rest = url.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    if not bucket or any(p in (".", "..") for p in prefix.split("/") if p):
        raise MirrorError(f"{url!r} is not an s3://BUCKET/PREFIX URL",
                          hint="e.g. s3://templates/vz (the prefix may be empty)")
    prefix = "/".join(p for p in prefix.split("/") if p)
    return S3Url(bucket, prefix + "/" if prefix else "")


class _Precondition(Exception):
    """A conditional write found the object changed (HTTP 412)."""


class Bucket:
    """One bucket and prefix, with errors turned into MirrorError."""

    def __init__(self, url: S3Url) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise MirrorError("publishing to S3 needs boto3, which is not installed",
                              hint="pip install 'vzpkg[s3]' (or boto3)") from None
        self.url = url
        self.endpoint = (os.environ.get("AWS_ENDPOINT_URL_S3")
                         or os.environ.get("AWS_ENDPOINT_URL") or None)
        cfg = Config(connect_timeout=5, read_timeout=60,
                     retries={"total_max_attempts": 2, "mode": "standard"})
        self.client: S3Client = boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, config=cfg)

    def _fail(self, exc: Exception, what: str) -> MirrorError:
        from botocore.exceptions import (
            ClientError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            ReadTimeoutError,
        )
        where = f"{self.url}" + (f" at {self.endpoint}" if self.endpoint else "")
        if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
            return MirrorError(f"cannot reach the object store for {where}: {exc}; "
                               "nothing was written",
                               hint="check AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) and "
                                    "that the store is up")
        if isinstance(exc, ReadTimeoutError):
            return MirrorError(f"{what}: the object store at {where} stopped answering")
        if isinstance(exc, NoCredentialsError):
            return MirrorError(f"no AWS credentials to write {where}",
                               hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                                    "AWS_PROFILE with ~/.aws/credentials")
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            msg = str(err.get("Message", "")) or code
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied",
                        "InvalidToken", "ExpiredToken", "403"):
                return MirrorError(f"{what}: the object store refused the credentials "
                                   f"({code}: {msg}); nothing was written",
                                   hint="check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
                                        "(or AWS_PROFILE) and the key's permissions on "
                                        f"bucket {self.url.bucket}")
            if code in ("NoSuchBucket", "404") and what.startswith("read"):
                return MirrorError(f"bucket {self.url.bucket} does not exist ({where})",
                                   hint="create it first, or fix the bucket name")
            return MirrorError(f"{what}: {code}: {msg}")
        return MirrorError(f"{what}: {exc}")

    def key(self, rel: str) -> str:
        return self.url.prefix + rel

    def get(self, rel: str) -> tuple[bytes, str] | None:
        """(content, ETag) of an object; None when there is none."""
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            r = self.client.get_object(Bucket=self.url.bucket, Key=self.key(rel))
            return r["Body"].read(), r["ETag"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchKey":
                return None
            raise self._fail(exc, f"read {self.url}{rel}") from None
        except BotoCoreError as exc:
            raise self._fail(exc, f"read {self.url}{rel}") from None

    def sha256_of(self, rel: str) -> str | None:
        """The sha256 metadata of an object (None when there is no object)."""
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            r = self.client.head_object(Bucket=self.url.bucket, Key=self.key(rel))
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey"):
                return None
            raise self._fail(exc, f"read {self.url}{rel}") from None
        except BotoCoreError as exc:
            raise self._fail(exc, f"read {self.url}{rel}") from None
        return r.get("Metadata", {}).get(META_SHA, "")

    def put(self, rel: str, body: bytes | Path, *, sha256: str, if_match: str | None = None,
            if_none_match: bool = False) -> None:
        from botocore.exceptions import BotoCoreError, ClientError
        args: dict[str, Any] = {"Bucket": self.url.bucket, "Key": self.key(rel),
                                "Metadata": {META_SHA: sha256}}
        if if_match is not None:
            args["IfMatch"] = if_match
        if if_none_match:
            args["IfNoneMatch"] = "*"
        if rel.endswith(".json"):
            args["ContentType"] = "application/json"
        try:
            if isinstance(body, Path):
                with body.open("rb") as f:
                    self.client.put_object(Body=f, **args)
            else:
                self.client.put_object(Body=body, **args)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code"))
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                raise _Precondition(rel) from None
            raise self._fail(exc, f"write {self.url}{rel}") from None
        except BotoCoreError as exc:
            raise self._fail(exc, f"write {self.url}{rel}") from None


def _sign(keyring: Keyring, keyid: str, data: bytes, tmp: Path) -> bytes:
    src = tmp / "data"
    src.write_bytes(data)
    return _sign_file(keyring, keyid, src, tmp)


def _put_once(b: Bucket, rel: str, body: bytes | Path, sha: str, what: str) -> None:
    """Write an object that must never change: if it is there, it must be *sha*."""
    try:
        b.put(rel, body, sha256=sha, if_none_match=True)
    except _Precondition:
        have = b.sha256_of(rel)
        if have != sha:
            raise MirrorError(f"{b.url}{rel} is already in the bucket with other content "
                              f"({what}); nothing of it was replaced",
                              hint="clients take the newest serial: rebuild so the serial "
                                   "grows past the published one") from None


def _upload(b: Bucket, m: Manifest, src: Path, keyring: Keyring, keyid: str,
            tmp: Path) -> tuple[IndexEntry, StreamItem]:
    from vzpkg.store.export.lxc import incus_metadata_tarball
    meta = incus_metadata_tarball(m)
    h, combined = hashlib.sha256(), hashlib.sha256(meta)
    with src.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            combined.update(chunk)
    if h.hexdigest() != m.sha256 or src.stat().st_size != m.size:
        raise MirrorError(f"cache {m.name}: {src} does not match its manifest; not published",
                          hint=f"run 'vzpkg verify {m.name}'; rebuild or re-import it")
    rel = f"caches/{m.name}/{m.serial}"
    manifest_bytes = m.dumps().encode()
    manifest_sha = hashlib.sha256(manifest_bytes).hexdigest()
    _put_once(b, f"{rel}/{m.tarball}", src, m.sha256, f"cache {m.name} serial {m.serial}")
    sig = _sign_file(keyring, keyid, src, tmp)
    # if one is there already, it signs these very bytes (the tarball's sha256 matched)
    with contextlib.suppress(_Precondition):
        b.put(f"{rel}/{m.tarball}.asc", sig, sha256=hashlib.sha256(sig).hexdigest(),
              if_none_match=True)
    _put_once(b, f"{rel}/{m.name}.manifest.json", manifest_bytes, manifest_sha,
              f"manifest of {m.name} serial {m.serial}")
    _put_once(b, f"{rel}/{m.name}.incus.tar.xz", meta, hashlib.sha256(meta).hexdigest(),
              f"image metadata of {m.name} serial {m.serial}")
    e = IndexEntry(
        name=m.name, distribution=m.distribution, release=m.release, arch=m.arch,
        set_name=m.set_name, serial=m.serial, size=m.size, sha256=m.sha256,
        compression=m.compression, tarball=f"{rel}/{m.tarball}",
        manifest=f"{rel}/{m.name}.manifest.json", manifest_sha256=manifest_sha,
        signature=f"{rel}/{m.tarball}.asc", packages=len(m.packages), created=m.created)
    return e, item_for(e, meta, combined.hexdigest())


def _stream_items(b: Bucket, index: Index, new: dict[str, StreamItem],
                  local: dict[str, tuple[Manifest, Path]]) -> dict[str, StreamItem]:
    """Items for the entries of *index*: ours, the bucket's images.json's, or made
    from a local copy of an unchanged cache.  An entry with none of these (another
    publisher's, whose images.json was replaced in a race) is left out of the
    stream until it is published again; the stream never names a missing object."""
    got = b.get(STREAMS_IMAGES)
    old = read_items(got[0] if got else None)
    items: dict[str, StreamItem] = {}
    for e in index.entries:
        it = new.get(e.name) or old.get(e.name)
        if (it is None or it.sha256 != e.sha256) and e.name in local \
                and local[e.name][0].sha256 == e.sha256:
            from vzpkg.store.export.lxc import incus_metadata_tarball
            m, src = local[e.name]
            meta = incus_metadata_tarball(m)
            it = item_for(e, meta, combined_sha256(meta, src))
            _put_once(b, it.meta_path, meta, it.meta_sha256, f"image metadata of {e.name}")
        if it is not None and it.sha256 == e.sha256:
            items[e.name] = it
    return items


def _sign_file(keyring: Keyring, keyid: str, src: Path, tmp: Path) -> bytes:
    sig = tmp / (src.name + ".asc")
    sig.unlink(missing_ok=True)
    try:
        keyring.sign_detached(src, keyid, sig)
    except GpgError as exc:
        raise MirrorError(f"cannot sign {src.name} with key {keyid}: {exc.message}",
                          hint="check --sign / signing.key and the keyring") from None
    return sig.read_bytes()


def _read_index(b: Bucket, keyring: Keyring, signer: str) -> tuple[Index, str | None]:
    """The bucket's index, its signature checked; (index, ETag or None if none)."""
    got = b.get(INDEX_NAME)
    if got is None:
        return Index(()), None
    data, etag = got
    where = f"{b.url}{INDEX_NAME}"
    hint = (f"the index is half-written or was altered; nothing was written.  Restore "
            f"it, or delete {INDEX_NAME} and {INDEX_SIG_NAME} from the prefix and publish "
            "again (objects already there are checked and kept)")
    try:
        index = Index.from_bytes(data, source=where)
    except MirrorError as exc:
        raise MirrorError(f"{exc.message}; nothing was written", hint=hint) from None
    sig = b.get(INDEX_SIG_NAME)
    if sig is None:
        raise MirrorError(f"{where} has no signature {INDEX_SIG_NAME}", hint=hint)
    try:
        keyring.verify_data(sig[0], data, [signer], what=where)
    except GpgError as exc:
        raise MirrorError(f"{exc.message}; nothing was written", hint=hint) from None
    return index, etag


def publish_s3(store: CacheStore, url: str, names: Sequence[str], *, keyring: Keyring,
               keyid: str, merge: Sequence[Path] = ()) -> PublishReport:
    """Publish into ``s3://bucket/prefix`` (see the module's documentation)."""
    target = parse_s3_url(url)
    signer = check_secret_key(keyring, keyid)
    sources = merge_sources(merge, names) if merge else _from_store(store, names)
    if not sources:
        raise MirrorError(f"no caches to publish in {store.dir}",
                          hint="build or import a cache first")
    b = Bucket(target)
    old, etag = _read_index(b, keyring, signer)
    done: list[Published] = []
    new: dict[str, IndexEntry] = {}
    new_items: dict[str, StreamItem] = {}
    local = {m.name: (m, src) for m, src in sources}
    with tempfile.TemporaryDirectory(prefix="vzpkg-s3-") as t:
        tmp = Path(t)
        for m, src in sources:
            cur = old.get(m.name)
            if cur is not None and cur.sha256 == m.sha256 \
                    and b.sha256_of(cur.tarball) == m.sha256:
                done.append(Published(m.name, m.serial, m.sha256, m.size, "unchanged",
                                      cur.tarball))
                continue
            refuse_older(cur, m, "the bucket", "prefix")
            e, new_items[m.name] = _upload(b, m, src, keyring, keyid, tmp)
            new[m.name] = e
            done.append(Published(m.name, m.serial, m.sha256, m.size, "published",
                                  e.tarball))
        written = bool(new) or etag is None or b.get(STREAMS_INDEX) is None
        for _ in range(ATTEMPTS):
            if not written:
                break
            index = old.with_entries(new, _now())
            # the simplestreams files first: they name only objects already there
            items = _stream_items(b, index, new_items, local)
            for rel, body in render(index, items).items():
                b.put(rel, body, sha256=hashlib.sha256(body).hexdigest())
                asc = _sign(keyring, keyid, body, tmp)
                b.put(rel + ".asc", asc, sha256=hashlib.sha256(asc).hexdigest())
            data = index.to_bytes()
            sig = _sign(keyring, keyid, data, tmp)
            try:
                b.put(INDEX_NAME, data, sha256=hashlib.sha256(data).hexdigest(),
                      if_match=etag, if_none_match=etag is None)
            except _Precondition:
                # another publisher wrote the index since it was read: merge onto theirs
                old, etag = _read_index_after_race(b, keyring, signer)
                new = _still_newer(new, old)
                continue
            b.put(INDEX_SIG_NAME, sig, sha256=hashlib.sha256(sig).hexdigest())
            break
        else:
            raise MirrorError(f"{target}{INDEX_NAME}: changed by another publisher "
                              f"{ATTEMPTS} times in a row; the caches are uploaded, the "
                              "index was not updated", hint="publish again")
    return PublishReport(Path(str(target)), tuple(done), written, ())


def _read_index_after_race(b: Bucket, keyring: Keyring, signer: str
                           ) -> tuple[Index, str | None]:
    # the other publisher writes its signature right after its index: wait for it
    # (an index is merged and signed again only once its own signature checks)
    import time
    for _ in range(25):
        try:
            return _read_index(b, keyring, signer)
        except MirrorError:
            time.sleep(0.2)
    return _read_index(b, keyring, signer)


def _still_newer(new: dict[str, IndexEntry], theirs: Index) -> dict[str, IndexEntry]:
    """Our entries that are not older than what the other publisher wrote."""
    out = {}
    for name, e in new.items():
        cur = theirs.get(name)
        if cur is not None and cur.serial > e.serial:
            continue
        if cur is not None and cur.serial == e.serial and cur.sha256 != e.sha256:
            raise MirrorError(f"cache {name} serial {e.serial}: another publisher wrote "
                              "different content at the same time; the index was not "
                              "updated", hint="build each cache in one place only")
        out[name] = e
    return out
