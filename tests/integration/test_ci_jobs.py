"""A CI run in small: ``vzpkg matrix`` plans the jobs, each job builds its cell of the
tests' RPM distribution into a cache directory of its own (real dnf builds against
the repository the tests serve on 127.0.0.1), ``vzpkg publish --merge`` combines the
jobs' outputs into one signed tree without rebuilding, and a host pulls every cache
from it over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mirror_helpers import Keys, MirrorServer, config_for, make_keys
from tests.rpm_helpers import (
    ServedDistribution,
    rpm_dist_fixture,  # noqa: F401  (the session fixture rpm_dist)
)
from vzpkg.mirror import Puller
from vzpkg.store.cachestore import CacheStore

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    k = make_keys(tmp_path_factory.mktemp("keys"))
    yield k
    k.close()


def vzpkg(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vzpkg.cli.vzpkg", *map(str, args)],
                          capture_output=True, text=True, check=False, timeout=600)


def test_matrix_jobs_merged_and_pulled(rpm_dist: ServedDistribution, keys: Keys,
                                       tmp_path: Path) -> None:
    ws = rpm_dist.workspace(tmp_path / "ws")
    r = vzpkg("--workspace", ws, "matrix", "vztest", "--set", "minimal", "--set", "nodocs",
              "--json")
    assert r.returncode == 0, r.stderr
    cells = json.loads(r.stdout)["include"]
    assert [c["name"] for c in cells] == ["vztest-1-x86_64-minimal", "vztest-1-x86_64-nodocs"]
    jobs = []
    for cell in cells:                                    # one job per cell, own cache dir
        out = tmp_path / "jobs" / cell["name"]
        r = vzpkg("--workspace", ws, "--cache-dir", out, "build", cell["name"], "--json")
        assert r.returncode == 0, r.stderr
        jobs.append(out)
    before = {p: p.stat().st_mtime_ns for j in jobs for p in j.iterdir() if p.is_file()}
    tree = tmp_path / "tree"
    r = vzpkg("publish", tree, *[x for j in jobs for x in ("--merge", j)], "--sign",
              keys.fpr, "--gnupghome", keys.home, "--json")
    assert r.returncode == 0, r.stderr
    assert [c["status"] for c in json.loads(r.stdout)["caches"]] == ["published"] * 2
    # nothing was rebuilt or touched in the jobs' outputs
    assert {p: p.stat().st_mtime_ns for j in jobs for p in j.iterdir() if p.is_file()} \
        == before
    host = tmp_path / "host"
    with MirrorServer(tree) as srv, Puller(CacheStore(host), config_for(keys, [srv.url])) as p:
        report = p.pull([c["name"] for c in cells])
    assert report.ok, report.failed
    for cell, job in zip(cells, jobs, strict=True):
        got, built = CacheStore(host).entry(cell["name"]), CacheStore(job).entry(cell["name"])
        assert got is not None and built is not None
        assert got.tarball.read_bytes() == built.tarball.read_bytes()
