"""The test RPM distribution and the dnf backend's view of repositories
(repo_state): signatures, dates, offline copies, metalink and mirrorlist.
No root needed: nothing is installed here."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.rpm_helpers import (
    RepoServer,
    ServedDistribution,
    dnf_context,
    rpm_dist_fixture,  # noqa: F401  (the session fixture rpm_dist)
    vztest_plan,
)
from tests.rpmrepo.builder import MINIMAL
from vzpkg.build.backends import get_backend
from vzpkg.build.backends.rpm_repomd import parse_repomd
from vzpkg.core.errors import BuildError
from vzpkg.template.model import Repository


def _rpm_k(served: ServedDistribution, tmp: Path, rpm: Path) -> subprocess.CompletedProcess[str]:
    """rpm -K against a private rpmdb holding only the distribution key."""
    db = tmp / "rpmdb"
    if not db.exists():
        db.mkdir()
        key = tmp / "key.asc"
        key.write_text(served.dist.key.armored)
        subprocess.run(["rpm", "--dbpath", str(db), "--import", str(key)], check=True,
                       env={"HOME": str(tmp), "PATH": "/usr/bin:/bin"})
    return subprocess.run(["rpm", "--dbpath", str(db), "-K", str(rpm)],
                          capture_output=True, text=True, check=False,
                          env={"HOME": str(tmp), "PATH": "/usr/bin:/bin", "LC_ALL": "C"})


def test_good_repository_is_signed_by_the_distribution_key(
        rpm_dist: ServedDistribution, tmp_path: Path) -> None:
    pkgs = sorted((rpm_dist.dist.repo("good") / "Packages").glob("*.rpm"))
    names = {p.name.rsplit("-", 2)[0] for p in pkgs}
    assert set(MINIMAL) <= names
    for p in pkgs:
        r = _rpm_k(rpm_dist, tmp_path, p)
        assert r.returncode == 0 and "signatures OK" in r.stdout, r.stdout + r.stderr


def test_bad_variants_really_are_bad(rpm_dist: ServedDistribution, tmp_path: Path) -> None:
    unsigned = next((rpm_dist.dist.repo("unsigned") / "Packages").glob("vztest-b-*"))
    r = _rpm_k(rpm_dist, tmp_path, unsigned)
    assert "signatures" not in r.stdout           # digests only: no signature at all
    other = next((rpm_dist.dist.repo("otherkey") / "Packages").glob("vztest-b-*"))
    r = _rpm_k(rpm_dist, tmp_path, other)
    assert r.returncode != 0 and "SIGNATURES NOT OK" in r.stdout
    assert not list((rpm_dist.dist.repo("unresolvable") / "Packages").glob("vztest-c-*"))
    primary = next((rpm_dist.dist.repo("badsum") / "repodata").glob("*-primary.xml.gz"))
    text = gzip.decompress(primary.read_bytes()).decode()
    bad = rpm_dist.dist.repo("badsum") / "Packages" / unsigned.name
    assert hashlib.sha256(bad.read_bytes()).hexdigest() not in text


def test_repo_state_verifies_repomd_and_dates_it(rpm_dist: ServedDistribution,
                                                 tmp_path: Path) -> None:
    plan = vztest_plan(rpm_dist, tmp_path)
    backend = get_backend("dnf")(dnf_context(plan, tmp_path, pkg_cache=tmp_path / "pc"))
    state = backend.repo_state()
    repomd = (rpm_dist.dist.repo("good") / "repodata/repomd.xml").read_bytes()
    assert state.files == ((rpm_dist.url("good") + "repodata/repomd.xml",
                            hashlib.sha256(repomd).hexdigest()),)
    assert state.source_date == parse_repomd(repomd, "x") > 1_600_000_000
    assert backend.repo_state() == state                   # stable
    v2 = vztest_plan(rpm_dist, tmp_path, "v2")
    state2 = get_backend("dnf")(dnf_context(v2, tmp_path / "v2",
                                            pkg_cache=tmp_path / "pc")).repo_state()
    assert state2.digest != state.digest


def test_repomd_signed_by_an_unpinned_key_is_refused(rpm_dist: ServedDistribution,
                                                     tmp_path: Path) -> None:
    plan = vztest_plan(rpm_dist, tmp_path)
    ctx = dnf_context(plan, tmp_path, pkg_cache=tmp_path / "pc",
                      keys=[rpm_dist.dist.other_key.armored])
    with pytest.raises(BuildError) as ei:
        get_backend("dnf")(ctx).repo_state()
    assert "does not verify with the template's pinned keys" in str(ei.value)
    assert "repomd.xml" in str(ei.value)


def test_unsigned_repomd_is_refused(rpm_dist: ServedDistribution, tmp_path: Path) -> None:
    root = tmp_path / "served"
    shutil.copytree(rpm_dist.dist.repo("good"), root / "nosig")
    (root / "nosig/repodata/repomd.xml.asc").unlink()
    with RepoServer(root) as server:
        plan = vztest_plan(rpm_dist, tmp_path, url=f"{server.url}/nosig/")
        with pytest.raises(BuildError) as ei:
            get_backend("dnf")(dnf_context(plan, tmp_path, pkg_cache=tmp_path / "pc")
                               ).repo_state()
    assert "has no signature (repomd.xml.asc)" in str(ei.value)
    assert ei.value.hint and "repo_gpgcheck" in ei.value.hint


def test_repository_down_is_a_clear_error(rpm_dist: ServedDistribution,
                                          tmp_path: Path) -> None:
    down = rpm_dist.down_url
    plan = vztest_plan(rpm_dist, tmp_path, url=down)
    with pytest.raises(BuildError) as ei:
        get_backend("dnf")(dnf_context(plan, tmp_path, pkg_cache=tmp_path / "pc")
                           ).repo_state()
    text = str(ei.value)
    assert "build step 'repository' failed" in text
    assert "connection refused" in text and down in text
    assert "log:" in text and ei.value.hint


def test_offline_uses_the_copy_of_the_last_online_check(rpm_dist: ServedDistribution,
                                                        tmp_path: Path) -> None:
    plan = vztest_plan(rpm_dist, tmp_path)
    pc = tmp_path / "pc"
    with pytest.raises(BuildError, match="not in the package cache"):
        get_backend("dnf")(dnf_context(plan, tmp_path / "a", pkg_cache=pc,
                                       offline=True)).repo_state()
    online = get_backend("dnf")(dnf_context(plan, tmp_path / "b", pkg_cache=pc)).repo_state()
    mark = len(rpm_dist.server.requests)
    offline = get_backend("dnf")(dnf_context(plan, tmp_path / "c", pkg_cache=pc,
                                             offline=True)).repo_state()
    assert offline == online
    assert rpm_dist.requested_since(mark) == []


def test_metalink_and_mirrorlist(rpm_dist: ServedDistribution, tmp_path: Path) -> None:
    repomd = (rpm_dist.dist.repo("good") / "repodata/repomd.xml").read_bytes()
    sha = hashlib.sha256(repomd).hexdigest()
    served = tmp_path / "served"
    served.mkdir()
    (served / "metalink.xml").write_text(f"""<?xml version="1.0" encoding="utf-8"?>
<metalink version="3.0" xmlns="http://www.metalinker.org/"
          xmlns:mm0="http://fedorahosted.org/mirrormanager">
 <files>
  <file name="repomd.xml">
   <mm0:timestamp>1700000123</mm0:timestamp>
   <size>{len(repomd)}</size>
   <verification>
    <hash type="md5">00000000000000000000000000000000</hash>
    <hash type="sha256">{sha}</hash>
   </verification>
   <resources maxconnections="1">
    <url protocol="http" type="http" preference="100">{rpm_dist.url()}repodata/repomd.xml</url>
   </resources>
  </file>
 </files>
</metalink>
""")
    (served / "mirrorlist").write_text(f"# comment\n\n{rpm_dist.url()}\n")
    with RepoServer(served) as server:
        plan = vztest_plan(rpm_dist, tmp_path)
        for field, url, date in (("metalink", f"{server.url}/metalink.xml", 1700000123),
                                 ("mirrorlist", f"{server.url}/mirrorlist", None)):
            repo = Repository(name="vztest", metalink=url if field == "metalink" else None,
                              mirrorlist=url if field == "mirrorlist" else None)
            p = dataclasses.replace(plan, repositories=(repo,))
            state = get_backend("dnf")(dnf_context(p, tmp_path / field,
                                                   pkg_cache=tmp_path / "pc")).repo_state()
            assert state.files[0][1] == sha, field
            if date is not None:
                assert state.source_date == date
            else:
                assert state.source_date == parse_repomd(repomd, "x")
