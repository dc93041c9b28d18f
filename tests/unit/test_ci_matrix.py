"""CI: ``vzpkg matrix`` lists the build cells in GitHub's and GitLab's shapes, and
``vzpkg publish --merge`` combines the caches of separate build jobs into one
signed tree that ``pull`` reads, without rebuilding anything."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import assert_user_error, run_cli
from tests.mirror_helpers import (
    Keys,
    MirrorServer,
    config_for,
    make_cache,
    make_keys,
    publish_tree,
)
from tests.unit.test_mirror_publish import tree_state
from vzpkg.mirror import Puller
from vzpkg.store.cachestore import CacheStore

A = "test-1-x86_64-minimal"
B = "test-1-x86_64-default"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    k = make_keys(tmp_path_factory.mktemp("keys"))
    yield k
    k.close()


def vzpkg(*args: str | Path) -> tuple[int, str, str]:
    r = run_cli("vzpkg", args, env={"VZPKG_CONFIG": os.devnull})
    return r.returncode, r.stdout, r.stderr


def test_github_matrix_is_the_product_of_each_template() -> None:
    code, out, err = vzpkg("matrix", "debian", "--arch", "x86_64", "--json")
    assert code == 0, err
    assert out.count("\n") == 1                      # one line, for $GITHUB_OUTPUT
    cells = json.loads(out)["include"]
    code, text, _ = vzpkg("list", "--json")
    debian = next(t for t in json.loads(text)["templates"] if t["distribution"] == "debian")
    want = {f"debian-{r}-x86_64-{s}" for r in debian["releases"] for s in debian["sets"]}
    assert {c["name"] for c in cells} == want and len(cells) == len(want)
    for c in cells:
        assert c["name"] == f"{c['template']}-{c['release']}-{c['arch']}-{c['set']}"


def test_gitlab_matrix_multiplies_to_the_same_cells() -> None:
    code, out, err = vzpkg("matrix", "debian", "almalinux", "--set", "minimal", "--format",
                           "gitlab", "--json")
    assert code == 0, err
    items = json.loads(out)["parallel"]["matrix"]
    gitlab = {f"{i['TEMPLATE']}-{r}-{a}-{s}" for i in items for r in i["RELEASE"]
              for a in i["ARCH"] for s in i["SET"]}
    _, text, _ = vzpkg("matrix", "debian", "almalinux", "--set", "minimal")
    assert gitlab == set(text.split())
    assert all(n.endswith("-minimal") for n in gitlab) and len(gitlab) > 2


def test_matrix_naming_a_missing_template_or_value_fails_cleanly() -> None:
    r = run_cli("vzpkg", ["matrix", "debian", "nosuchdist", "--json"])
    assert_user_error(r, "nosuchdist", "known distributions")
    assert r.stdout == ""
    r = run_cli("vzpkg", ["matrix", "debian", "--release", "99"])
    assert_user_error(r, "--release 99", "the templates have")
    assert r.stdout == ""


def _publish(tree: Path, keys: Keys, *dirs: Path) -> tuple[int, str, str]:
    merge = [x for d in dirs for x in ("--merge", str(d))]
    return vzpkg("publish", tree, *merge, "--sign", keys.fpr, "--gnupghome", keys.home,
                 "--json")


def test_merge_of_two_jobs_is_pulled_from_one_signed_index(tmp_path: Path,
                                                           keys: Keys) -> None:
    job1, job2, tree = tmp_path / "job1", tmp_path / "job2", tmp_path / "tree"
    ma = make_cache(job1, A, 200_000, seed=1)           # two jobs, two cache directories
    mb = make_cache(job2, B, 150_000, seed=2)
    code, out, err = _publish(tree, keys, job1, job2)
    assert code == 0, err
    assert {c["name"]: c["status"] for c in json.loads(out)["caches"]} == \
        {A: "published", B: "published"}
    before = tree_state(tree)
    code, out, err = _publish(tree, keys, job1, job2)     # nothing changed: nothing written
    assert code == 0, err
    assert not json.loads(out)["index_written"]
    assert tree_state(tree) == before
    dst = tmp_path / "host"
    with MirrorServer(tree) as srv, Puller(CacheStore(dst), config_for(keys, [srv.url])) as p:
        report = p.pull([A, B])
    assert report.ok, report.failed
    for name, m, job in ((A, ma, job1), (B, mb, job2)):
        got = CacheStore(dst).entry(name)
        assert got is not None and got.manifest.sha256 == m.sha256
        assert got.tarball.read_bytes() == (job / m.tarball).read_bytes()


def test_merge_takes_published_trees_and_the_newest_serial(tmp_path: Path,
                                                          keys: Keys) -> None:
    job1, job2 = tmp_path / "job1", tmp_path / "job2"
    make_cache(job1, A, 100_000, seed=1)
    make_cache(job2, A, 100_000, seed=1)
    newer = make_cache(job2, A, 100_000, seed=3)          # serial 2 in job2
    assert newer.serial == 2
    publish_tree(job1, tmp_path / "tree1", keys)          # a job that published its own tree
    code, _, err = _publish(tmp_path / "tree", keys, tmp_path / "tree1", job2)
    assert code == 0, err
    index = json.loads((tmp_path / "tree" / "index.json").read_text())
    assert [(c["name"], c["serial"], c["sha256"]) for c in index["caches"]] == \
        [(A, 2, newer.sha256)]


def test_merge_refuses_two_contents_for_one_serial(tmp_path: Path, keys: Keys) -> None:
    job1, job2, tree = tmp_path / "job1", tmp_path / "job2", tmp_path / "tree"
    make_cache(job1, A, 100_000, seed=1)
    make_cache(job2, A, 100_000, seed=9)                  # same name and serial, other bytes
    make_cache(job1, B, 100_000, seed=4)
    publish_tree(job1, tree, keys, [B])
    before = tree_state(tree)
    r = run_cli("vzpkg", ["publish", tree, "--merge", job1, "--merge", job2, "--sign",
                          keys.fpr, "--gnupghome", keys.home])
    assert_user_error(r, A, "serial 1 differs between", "nothing was published")
    assert tree_state(tree) == before


def test_merge_refuses_a_damaged_job_output(tmp_path: Path, keys: Keys) -> None:
    job1, tree = tmp_path / "job1", tmp_path / "tree"
    m = make_cache(job1, A, 100_000, seed=1)
    tar = job1 / m.tarball
    data = bytearray(tar.read_bytes())
    data[-100] ^= 1
    tar.write_bytes(bytes(data))
    assert hashlib.sha256(data).hexdigest() != m.sha256
    r = run_cli("vzpkg", ["publish", tree, "--merge", job1, "--sign", keys.fpr,
                          "--gnupghome", keys.home])
    assert_user_error(r, "does not match its manifest")
    assert not (tree / "index.json").exists()
    r = run_cli("vzpkg", ["publish", tree, "--merge", tmp_path / "nosuch", "--sign",
                          keys.fpr, "--gnupghome", keys.home])
    assert_user_error(r, "nosuch", "not a directory")
