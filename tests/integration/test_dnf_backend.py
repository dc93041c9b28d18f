"""The dnf backend against the tests' own signed RPM distribution, served on
127.0.0.1: real dnf, real rpm, real namespaces (needs root)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.rpm_helpers import (
    RepoServer,
    ServedDistribution,
    dnf_context,
    entering_ves,
    prestarted_dnfs,
    rpm_dist_fixture,  # noqa: F401  (the session fixture rpm_dist)
    vztest_plan,
)
from tests.rpmrepo.builder import MINIMAL
from vzpkg.build.backends import dnf as dnf_backend
from vzpkg.build.backends import get_backend
from vzpkg.build.backends.dnf import Dnf
from vzpkg.build.backends.rpm_db import target_dbpath
from vzpkg.build.buildve import BuildVE
from vzpkg.build.pipeline import build
from vzpkg.core.errors import BuildError
from vzpkg.core.settings import Settings, load_settings
from vzpkg.template.loader import make_plan

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


def _backend(served: ServedDistribution, tmp: Path, variant: str = "good", *,
             set_name: str = "minimal", pkg_cache: Path | None = None,
             offline: bool = False) -> Dnf:
    plan = vztest_plan(served, tmp, variant, set_name=set_name)
    ctx = dnf_context(plan, tmp / f"ctx-{variant}-{set_name}",
                      pkg_cache=pkg_cache or tmp / "pkgcache", offline=offline)
    b = get_backend("dnf")(ctx)
    assert isinstance(b, Dnf)
    return b


def _rpm_qa(root: Path, dbpath: str = "/var/lib/rpm") -> dict[str, str]:
    r = subprocess.run(["rpm", "--root", str(root), "--dbpath", dbpath, "-qa",
                        "--qf", "%{NAME} %{VERSION}-%{RELEASE}\n"],
                       capture_output=True, text=True, check=True,
                       env={"HOME": "/nonexistent", "PATH": "/usr/bin:/bin"})
    return dict(line.split() for line in r.stdout.splitlines()
                if not line.startswith("gpg-pubkey"))


def _mounts_below(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(path))]


def test_bootstrap_installs_the_set_verified(rpm_dist: ServedDistribution,
                                             tmp_path: Path) -> None:
    b = _backend(rpm_dist, tmp_path)
    root = tmp_path / "root"
    b.bootstrap(root)
    # every package of the set and its dependency chain, nothing weak
    assert sorted(_rpm_qa(root)) == sorted(MINIMAL)
    assert not (root / "usr/share/vztest/weak").exists()
    assert (root / "usr/share/doc/vztest-c/README").is_file()       # docs kept
    # the %post scriptlet ran inside the root with the distribution's /bin/sh
    assert (root / "etc/vztest-hello-post").read_text() == "hello %post ran: 1\n"
    assert "hello:x:1000:1000:" in (root / "etc/passwd").read_text()
    # /bin/sh from the static busybox works in the root
    r = subprocess.run(["chroot", str(root), "/bin/sh", "-c", "echo $((6*7)); id -u"],
                       capture_output=True, text=True, check=True)
    assert r.stdout.split() == ["42", "0"]
    # the rpmdb is where the target expects it, not under Debian's ~/.rpmdb
    assert (root / "var/lib/rpm/rpmdb.sqlite").is_file()
    assert not (root / "root/.rpmdb").exists()
    # the pinned key is in the rpmdb; downloads were kept in the shared cache
    keys = subprocess.run(["rpm", "--root", str(root), "--dbpath", "/var/lib/rpm", "-q",
                           "gpg-pubkey"], capture_output=True, text=True, check=True)
    assert rpm_dist.fingerprint[-8:].lower() in keys.stdout
    cached = {p.name for p in b.cache.rglob("*.rpm")}
    assert {n.split("-1.0-")[0] for n in cached} == set(MINIMAL)
    assert _mounts_below(root) == []
    assert list(root.glob("var/cache/dnf/*")) == []          # it was only mounted there

    b.clean(root)
    assert list(root.glob("var/log/dnf*")) == [] and not (root / "var/log/hawkey.log").exists()
    assert list(root.rglob("*.sqlite-wal")) == [] and list(root.rglob("*.sqlite-shm")) == []
    assert sorted(_rpm_qa(root)) == sorted(MINIMAL)          # still readable after clean


def test_warm_and_offline_builds_download_no_package(rpm_dist: ServedDistribution,
                                                     tmp_path: Path) -> None:
    cache = tmp_path / "shared"
    cold = _backend(rpm_dist, tmp_path / "cold", pkg_cache=cache)
    cold.repo_state()
    cold.bootstrap(tmp_path / "r1")
    mark = len(rpm_dist.server.requests)
    warm = _backend(rpm_dist, tmp_path / "warm", pkg_cache=cache)
    warm.repo_state()
    warm.bootstrap(tmp_path / "r2")
    # only repo_state's check of the signed repomd.xml: dnf reused its metadata
    # (verified current) and every package from the shared cache
    assert sorted(rpm_dist.requested_since(mark)) == ["/good/repodata/repomd.xml",
                                                      "/good/repodata/repomd.xml.asc"]
    assert sorted(_rpm_qa(tmp_path / "r2")) == sorted(MINIMAL)

    mark = len(rpm_dist.server.requests)
    off = _backend(rpm_dist, tmp_path / "off", pkg_cache=cache, offline=True)
    off.repo_state()
    off.bootstrap(tmp_path / "r3")
    assert rpm_dist.requested_since(mark) == []
    assert sorted(_rpm_qa(tmp_path / "r3")) == sorted(MINIMAL)


def test_changed_repository_is_seen_by_a_warm_build(rpm_dist: ServedDistribution,
                                                    tmp_path: Path) -> None:
    served = tmp_path / "served"
    shutil.copytree(rpm_dist.dist.repo("good"), served / "moving")
    cache = tmp_path / "pc"
    with RepoServer(served) as server:
        url = f"{server.url}/moving/"
        plan = vztest_plan(rpm_dist, tmp_path, url=url)
        first = get_backend("dnf")(dnf_context(plan, tmp_path / "1", pkg_cache=cache))
        s1 = first.repo_state()
        first.bootstrap(tmp_path / "r1")
        assert _rpm_qa(tmp_path / "r1")["vztest-c"] == "1.0-1"
        shutil.rmtree(served / "moving")
        shutil.copytree(rpm_dist.dist.repo("v2"), served / "moving")
        second = get_backend("dnf")(dnf_context(plan, tmp_path / "2", pkg_cache=cache))
        assert second.repo_state().digest != s1.digest
        second.bootstrap(tmp_path / "r2")
        assert _rpm_qa(tmp_path / "r2")["vztest-c"] == "1.0-2"


def test_offline_with_an_empty_cache_says_so(rpm_dist: ServedDistribution,
                                             tmp_path: Path) -> None:
    b = _backend(rpm_dist, tmp_path, offline=True)
    with pytest.raises(BuildError) as ei:
        b.bootstrap(tmp_path / "root")
    assert "not in the package cache" in str(ei.value)
    assert ei.value.hint and "without --offline" in ei.value.hint


def test_weak_deps_and_nodocs_options(rpm_dist: ServedDistribution, tmp_path: Path) -> None:
    weak = tmp_path / "weak"
    _backend(rpm_dist, tmp_path, set_name="weak").bootstrap(weak)
    assert "vztest-weak" in _rpm_qa(weak)
    nodocs = tmp_path / "nodocs"
    _backend(rpm_dist, tmp_path, set_name="nodocs").bootstrap(nodocs)
    assert "vztest-c" in _rpm_qa(nodocs)
    assert not (nodocs / "usr/share/doc/vztest-c/README").exists()
    assert (nodocs / "usr/share/vztest/c").is_file()


@pytest.mark.parametrize(("variant", "message"), [
    ("unsigned", "package vztest-b-1.0-1.noarch.rpm is not signed"),
    ("otherkey", "vztest-b-1.0-1.noarch is signed by a key the template does not pin"),
    ("badsum", "vztest-b-1.0-1.noarch.rpm does not match the checksum in the repository"),
    ("unresolvable", "a dependency cannot be resolved: nothing provides vztest-c"),
])
def test_bad_repositories_fail_clearly(rpm_dist: ServedDistribution, tmp_path: Path,
                                       variant: str, message: str) -> None:
    b = _backend(rpm_dist, tmp_path, variant)
    b.repo_state()                      # the metadata itself is fine and signed
    root = tmp_path / "root"
    with pytest.raises(BuildError) as ei:
        b.bootstrap(root)
    text = str(ei.value)
    assert "build step 'dnf install' failed" in text
    assert message in text
    assert f"log: {b.ctx.log.path}" in text and ei.value.hint
    assert _mounts_below(root) == []
    assert "vztest-b" not in _rpm_qa(root)


def test_update_upgrades_in_place(rpm_dist: ServedDistribution, tmp_path: Path) -> None:
    root = tmp_path / "root"
    cache = tmp_path / "pc"
    _backend(rpm_dist, tmp_path / "a", pkg_cache=cache).bootstrap(root)
    assert _rpm_qa(root)["vztest-c"] == "1.0-1"
    # nothing new: update changes no package
    same = _backend(rpm_dist, tmp_path / "b", pkg_cache=cache)
    same.update(BuildVE(root, same.ctx.log))
    assert _rpm_qa(root)["vztest-c"] == "1.0-1"
    # the v2 repository has vztest-c 1.0-2
    v2 = _backend(rpm_dist, tmp_path / "c", "v2", pkg_cache=cache)
    v2.update(BuildVE(root, v2.ctx.log))
    after = _rpm_qa(root)
    assert after["vztest-c"] == "1.0-2"
    assert (root / "usr/share/vztest/c").read_text() == "c 1.0-2\n"
    assert sorted(after) == sorted(MINIMAL)
    assert _mounts_below(root) == []


def test_target_dbpath_is_read_from_the_targets_macros(tmp_path: Path) -> None:
    assert target_dbpath(tmp_path) is None
    macros = tmp_path / "usr/lib/rpm/macros"
    macros.parent.mkdir(parents=True)
    macros.write_text("%_var /var\n%_dbpath\t\t%{_usr}/lib/sysimage/rpm\n")
    assert target_dbpath(tmp_path) == "/usr/lib/sysimage/rpm"


def _tree(root: Path) -> dict[str, tuple[int, bytes]]:
    """relative path -> (mode, content or link target) of everything below *root*."""
    out: dict[str, tuple[int, bytes]] = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        if p.is_symlink():
            data = os.readlink(p).encode()
        elif p.is_file():
            data = p.read_bytes()
        else:
            data = b""
        out[str(p.relative_to(root))] = (st.st_mode, data)
    return out


def test_same_plan_and_repositories_give_the_same_tree(rpm_dist: ServedDistribution,
                                                       tmp_path: Path) -> None:
    trees = []
    for i in range(2):
        b = _backend(rpm_dist, tmp_path / f"b{i}", pkg_cache=tmp_path / "pc")
        state = b.repo_state()
        b.bootstrap(tmp_path / f"r{i}")
        b.clean(tmp_path / f"r{i}")
        trees.append(_tree(tmp_path / f"r{i}"))
    assert trees[0].keys() == trees[1].keys()
    differ = [k for k in trees[0] if trees[0][k] != trees[1][k]]
    assert differ == []
    # rpm took the repositories' date (SOURCE_DATE_EPOCH) as the transaction id
    # and counts install times up from it in install order
    r = subprocess.run(["rpm", "--root", str(tmp_path / "r0"), "--dbpath", "/var/lib/rpm",
                        "-qa", "--qf", "%{INSTALLTID} %{INSTALLTIME}\n"], capture_output=True,
                       text=True, check=True,
                       env={"HOME": "/nonexistent", "PATH": "/usr/bin:/bin"})
    pairs = [tuple(map(int, line.split())) for line in r.stdout.splitlines()]
    assert {tid for tid, _ in pairs} == {state.source_date}
    assert min(t for _, t in pairs) == state.source_date
    assert max(t for _, t in pairs) < state.source_date + 60


def test_a_prestarted_dnf_installs_the_same_tree(rpm_dist: ServedDistribution,
                                                  tmp_path: Path) -> None:
    trees, logs = [], []
    before = set(prestarted_dnfs())
    for i, early in enumerate((False, True)):
        b = _backend(rpm_dist, tmp_path / f"b{i}", pkg_cache=tmp_path / "pc")
        root = tmp_path / f"r{i}"
        if early:
            b.prestart(root)
        b.repo_state()
        b.bootstrap(root)
        b.close()
        b.clean(root)
        trees.append(_tree(root))
        logs.append(b.ctx.log.path.read_text())
    assert "(pre-started)" not in logs[0] and "(pre-started)" in logs[1]
    assert trees[0] == trees[1]            # rpmdb install times included
    assert set(prestarted_dnfs()) <= before


def test_a_dnf_that_cannot_be_prestarted_runs_the_usual_way(
        rpm_dist: ServedDistribution, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # this interpreter (the test venv's) cannot import dnf's modules
    monkeypatch.setattr(dnf_backend, "dnf_python", lambda: sys.executable)
    b = _backend(rpm_dist, tmp_path)
    root = tmp_path / "root"
    b.prestart(root)
    b.repo_state()
    b.bootstrap(root)
    log = b.ctx.log.path.read_text()
    assert "cannot import dnf's modules" in log
    assert "running it the usual way" in log
    assert set(MINIMAL) <= set(_rpm_qa(root))


def _new_dnfs(before: set[int]) -> set[int]:
    """Pre-started dnfs not in *before*; waits a little: while a process execs,
    its command line can read empty."""
    for _ in range(100):
        new = set(prestarted_dnfs()) - before
        if new:
            return new
        time.sleep(0.02)
    return set()


def test_an_unused_prestart_leaves_nothing_behind(rpm_dist: ServedDistribution,
                                                 tmp_path: Path) -> None:
    b = _backend(rpm_dist, tmp_path)
    root = tmp_path / "root"
    before = set(prestarted_dnfs())
    b.prestart(root)
    started = _new_dnfs(before)
    assert started
    b.close()
    assert started.isdisjoint(prestarted_dnfs())
    assert _mounts_below(root) == []
    assert not (root / "var/lib/rpm").exists()    # it never ran


def test_an_early_start_no_build_takes_leaves_nothing_behind(
        rpm_dist: ServedDistribution, tmp_path: Path) -> None:
    ws = rpm_dist.workspace(tmp_path / "ws")
    settings = load_settings(workspace=ws, cache_dir=tmp_path / "caches")
    plan = make_plan("vztest-1-x86_64-minimal", settings)
    before = set(prestarted_dnfs())
    dnf_backend.prestart_early(plan, settings, force=True)
    started = _new_dnfs(before)
    assert started
    work = list(settings.work_dir.glob(f"{plan.name}.*"))
    assert [w.name for w in work] == [f"{plan.name}.{os.getpid()}"]
    dnf_backend.stop_early()
    assert started.isdisjoint(prestarted_dnfs())
    assert not work[0].exists()


def _pipeline(rpm_dist: ServedDistribution, tmp: Path, script: str,
              variant: str = "good") -> tuple[Settings, Any]:
    ws = rpm_dist.workspace(tmp / "ws", variant)
    tpl = ws / "metadata" / "vztest.yaml"
    text = tpl.read_text()
    old = 'echo "post-install ran in the VE" > /etc/vztest-post-install'
    assert old in text
    tpl.write_text(text.replace(old, script))
    settings = load_settings(workspace=ws, cache_dir=tmp / "caches")
    return settings, make_plan("vztest-1-x86_64-minimal", settings)


def test_the_post_install_script_runs_in_a_ve_made_ahead(rpm_dist: ServedDistribution,
                                                         tmp_path: Path) -> None:
    settings, plan = _pipeline(rpm_dist, tmp_path, 'echo "$(hostname) $STAGE $VE_ROOT '
                               '$(ls /proc | grep -c "^[0-9]")" > /etc/where')
    res = build(plan, settings, force=True)
    log = Path(str(res.log)).read_text()
    assert "(started ahead)" in log
    tree = tmp_path / "tree"
    tree.mkdir()
    subprocess.run(["tar", "--zstd", "-xpf", str(settings.cache_dir / f"{plan.name}.tar.zst"),
                    "-C", str(tree)], check=True)
    host, stage, ve_root, procs = (tree / "etc/where").read_text().split()
    assert (host, stage, ve_root) == ("vzpkg-build", "post-install", "/")
    assert int(procs) < 8          # its own pid namespace: the script, a subshell, ls, grep
    assert entering_ves() == []


def test_a_failing_script_made_ahead_fails_the_build_and_leaves_nothing(
        rpm_dist: ServedDistribution, tmp_path: Path) -> None:
    settings, plan = _pipeline(rpm_dist, tmp_path, 'echo "the script says no" >&2; exit 3')
    before = set(entering_ves())
    with pytest.raises(BuildError) as ei:
        build(plan, settings, force=True)
    assert "build step 'post-install' failed" in str(ei.value)
    assert "the script says no" in str(ei.value)
    assert not list(settings.cache_dir.glob("*.tar.zst"))
    assert list(settings.work_dir.glob(f"{plan.name}.{os.getpid()}")) == []
    assert set(entering_ves()) <= before


def test_a_ve_made_ahead_but_not_needed_is_stopped(rpm_dist: ServedDistribution,
                                                   tmp_path: Path) -> None:
    settings, plan = _pipeline(rpm_dist, tmp_path, "true", variant="unresolvable")
    before = set(entering_ves())
    with pytest.raises(BuildError, match="nothing provides vztest-c"):
        build(plan, settings, force=True)
    assert set(entering_ves()) <= before
    assert list(settings.work_dir.glob(f"{plan.name}.{os.getpid()}")) == []
