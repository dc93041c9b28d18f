"""vzpkg publish s3://: a signed tree in a bucket of a real S3 server (moto's server
mode on 127.0.0.1), pulled from the bucket's plain HTTP address."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import assert_user_error, run_cli
from tests.mirror_helpers import Keys, config_for, dead_url, make_cache, make_keys
from tests.s3_helpers import S3Server
from tests.unit.test_mirror_streams import walk
from vzpkg.mirror import Puller
from vzpkg.store.cachestore import CacheStore

A = "test-1-x86_64-minimal"
B = "test-2-x86_64-minimal"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    k = make_keys(tmp_path_factory.mktemp("keys"))
    yield k
    k.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with S3Server(tmp_path_factory.mktemp("moto") / "moto.log") as srv:
        yield srv


@pytest.fixture
def s3(server: S3Server) -> S3Server:
    """The shared server, with a new empty bucket named "mirror-<test>"."""
    server.new_bucket(f"mirror-{len(server.client().list_buckets()['Buckets'])}")
    return server


def publish(srv: S3Server, keys: Keys, caches: Path, url: str, *args: str | Path,
            **env: str) -> subprocess.CompletedProcess[str]:
    return run_cli("vzpkg", ["--cache-dir", caches, "publish", url, *args, "--sign",
                             keys.fpr, "--gnupghome", keys.home, "--json"],
                   env=srv.env(**env), timeout=120)


def state(srv: S3Server) -> dict[str, tuple[str, str]]:
    """key -> (ETag, last modified): any write shows."""
    out = {}
    c = srv.client()
    for key in srv.objects():
        h = c.head_object(Bucket=srv.bucket, Key=key)
        out[key] = (h["ETag"], str(h["LastModified"]))
    return out


def pull(keys: Keys, mirror: str, dst: Path, *names: str) -> Puller:
    with Puller(CacheStore(dst), config_for(keys, [mirror])) as p:
        report = p.pull(list(names))
    assert report.ok, report.failed
    return p


def test_publish_to_a_bucket_and_pull_over_http(tmp_path: Path, keys: Keys,
                                                s3: S3Server) -> None:
    src = tmp_path / "src"
    ma = make_cache(src, A, 300_000, seed=1)
    r = publish(s3, keys, src, f"s3://{s3.bucket}/vz")
    assert r.returncode == 0, r.stderr
    assert {c["status"] for c in json.loads(r.stdout)["caches"]} == {"published"}
    keys_ = set(s3.objects())
    assert {"vz/index.json", "vz/index.json.asc", f"vz/caches/{A}/1/{A}.tar.zst",
            f"vz/caches/{A}/1/{A}.tar.zst.asc", f"vz/caches/{A}/1/{A}.manifest.json",
            f"vz/caches/{A}/1/{A}.incus.tar.xz", "vz/streams/v1/index.json",
            "vz/streams/v1/index.json.asc", "vz/streams/v1/images.json",
            "vz/streams/v1/images.json.asc"} == keys_
    assert list(walk(s3.http_base("vz"), keys)) == ["test:1:amd64:minimal"]
    dst = tmp_path / "host"
    pull(keys, s3.http_base("vz"), dst, A)
    got = CacheStore(dst).entry(A)
    assert got is not None and got.tarball.read_bytes() == (src / ma.tarball).read_bytes()
    # unchanged: not one object is written again
    before = state(s3)
    r = publish(s3, keys, src, f"s3://{s3.bucket}/vz")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["index_written"] is False
    assert state(s3) == before
    # a new cache: the index grows, the old objects stay as they were
    make_cache(src, B, 100_000, seed=2)
    r = publish(s3, keys, src, f"s3://{s3.bucket}/vz")
    assert r.returncode == 0, r.stderr
    after = state(s3)
    assert all(after[k] == v for k, v in before.items()
               if "index.json" not in k and not k.startswith("vz/streams/"))
    pull(keys, s3.http_base("vz"), tmp_path / "host2", A, B)
    assert sorted(walk(s3.http_base("vz"), keys)) == ["test:1:amd64:minimal",
                                                      "test:2:amd64:minimal"]


def test_merge_of_job_outputs_into_a_bucket(tmp_path: Path, keys: Keys,
                                            s3: S3Server) -> None:
    make_cache(tmp_path / "job1", A, 100_000, seed=1)
    make_cache(tmp_path / "job2", B, 100_000, seed=2)
    r = publish(s3, keys, tmp_path / "empty", f"s3://{s3.bucket}", "--merge", tmp_path / "job1",
                "--merge", tmp_path / "job2")
    assert r.returncode == 0, r.stderr
    pull(keys, s3.http_base(), tmp_path / "host", A, B)


def test_concurrent_publishers_never_lose_or_dangle_an_entry(tmp_path: Path, keys: Keys,
                                                             s3: S3Server) -> None:
    names = [f"test-{i}-x86_64-minimal" for i in range(1, 5)]
    for i, n in enumerate(names):
        make_cache(tmp_path / f"job{i}", n, 50_000, seed=i)
    procs = [subprocess.Popen(
        [sys.executable, "-m", "vzpkg.cli.vzpkg", "--cache-dir", str(tmp_path / f"job{i}"),
         "publish", f"s3://{s3.bucket}/vz", "--sign", keys.fpr, "--gnupghome", str(keys.home)],
        env={**os.environ, **s3.env()}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for i in range(len(names))]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    index = json.loads(s3.client().get_object(Bucket=s3.bucket, Key="vz/index.json")
                       ["Body"].read())
    assert sorted(c["name"] for c in index["caches"]) == names      # no update was lost
    present = set(s3.objects())
    for c in index["caches"]:
        for k in ("tarball", "manifest", "signature"):
            assert f"vz/{c[k]}" in present                           # none dangles
    pull(keys, s3.http_base("vz"), tmp_path / "host", *names)       # and it verifies


def test_unreachable_store_and_missing_bucket(tmp_path: Path, keys: Keys,
                                              s3: S3Server) -> None:
    make_cache(tmp_path / "src", A, 50_000)
    r = publish(s3, keys, tmp_path / "src", f"s3://{s3.bucket}/vz",
                AWS_ENDPOINT_URL=dead_url().rstrip("/"))
    assert_user_error(r, "cannot reach the object store", f"s3://{s3.bucket}/vz",
                      "AWS_ENDPOINT_URL")
    r = publish(s3, keys, tmp_path / "src", "s3://nosuchbucket/vz")
    assert_user_error(r, "bucket nosuchbucket does not exist")
    assert s3.objects() == {}


def test_wrong_credentials_write_nothing(tmp_path: Path, keys: Keys) -> None:
    make_cache(tmp_path / "src", A, 50_000)
    with S3Server(tmp_path / "moto.log", auth=True) as srv:
        r = publish(srv, keys, tmp_path / "src", f"s3://{srv.bucket}/vz",
                    AWS_SECRET_ACCESS_KEY="not-the-secret")
        assert_user_error(r, "refused the credentials", "AWS_SECRET_ACCESS_KEY")
        r = publish(srv, keys, tmp_path / "src", f"s3://{srv.bucket}/vz",
                    AWS_ACCESS_KEY_ID="AKIANOSUCHKEY0000000")
        assert_user_error(r, "refused the credentials")
        assert srv.objects() == {}
        r = publish(srv, keys, tmp_path / "src", f"s3://{srv.bucket}/vz")       # the right key
        assert r.returncode == 0, r.stderr


def test_half_written_remote_index_is_refused(tmp_path: Path, keys: Keys,
                                              s3: S3Server) -> None:
    src = tmp_path / "src"
    make_cache(src, A, 50_000)
    assert publish(s3, keys, src, f"s3://{s3.bucket}/vz").returncode == 0
    c = s3.client()
    good = c.get_object(Bucket=s3.bucket, Key="vz/index.json")["Body"].read()
    for bad in (good[: len(good) // 2],                       # cut off mid-upload
                good.replace(b'"serial": 1', b'"serial": 7')):  # valid JSON, not signed
        c.put_object(Bucket=s3.bucket, Key="vz/index.json", Body=bad)
        before = state(s3)
        make_cache(src, B, 50_000, seed=len(bad))
        r = publish(s3, keys, src, f"s3://{s3.bucket}/vz")
        assert_user_error(r, "vz/index.json", "nothing was written", "half-written")
        assert state(s3) == before
        with Puller(CacheStore(tmp_path / "host"), config_for(keys, [s3.http_base("vz")])) \
                as p:
            assert not p.pull([A]).ok
