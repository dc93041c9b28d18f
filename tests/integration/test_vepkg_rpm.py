"""vzpkg install/remove/list/check-updates on RPM VEs made from the test RPM
distribution (busybox VEs with an rpm database and no dnf of their own): the
host's dnf serves them inside each VE's user namespace, through the package
proxy, checking packages with the keys in the VE's own rpm database."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli
from tests.rpm_helpers import (
    ServedDistribution,
    rpm_dist_fixture,  # noqa: F401  (the session fixture rpm_dist)
)
from tests.runtime_helpers import destroy_all, sh
from vzpkg.runtime.paths import VzPaths
from vzpkg.runtime.ve import Runtime

NAME = "vztest-1-x86_64-minimal"


@pytest.fixture(scope="module")
def setup(rpm_dist: ServedDistribution, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[dict[str, Any]]:
    """A cache built from a repository that later moves on (``moving`` points at
    the good repository, then at v2, which adds vztest-c 1.0-2)."""
    base = tmp_path_factory.mktemp("vepkg-rpm")
    moving = rpm_dist.dist.root / f"moving-{os.getpid()}"
    moving.unlink(missing_ok=True)
    moving.symlink_to("good")
    ws = rpm_dist.workspace(base / "ws", url=f"{rpm_dist.base_url}/{moving.name}/")
    tpl = ws / "metadata/vztest.yaml"       # a set that adds a package to minimal
    tpl.write_text(tpl.read_text().replace(
        "sets:\n", "sets:\n  tools:\n    extends: minimal\n    packages: [vztest-weak]\n", 1))
    caches = base / "caches"
    (ws / "vzpkg.yaml").write_text(f"cache_dir: {caches}\n")
    r = run_cli("vzpkg", ["--workspace", ws, "--cache-dir", caches, "build", NAME])
    assert r.returncode == 0, r.stderr
    rt = Runtime(VzPaths(base / "vz"), [caches])
    try:
        yield {"rt": rt, "ws": ws, "caches": caches, "moving": moving, "cleanup": []}
    finally:
        destroy_all(rt)
        moving.unlink(missing_ok=True)
        for d in moving.parent.glob(moving.name + "-*"):
            shutil.rmtree(d, ignore_errors=True)


def vzpkg(s: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("vzpkg", ["--workspace", s["ws"], "--cache-dir", s["caches"], *args],
                   env={"VZ_ROOT": str(s["rt"].paths.root)}, timeout=600)


def results(r: subprocess.CompletedProcess[str]) -> dict[int, dict[str, Any]]:
    assert "Traceback" not in r.stderr, r.stderr
    return {x["ctid"]: x for x in json.loads(r.stdout)["results"]}


def rpm_qa(s: dict[str, Any], ctid: int) -> dict[str, str]:
    r = subprocess.run(["rpm", "--root", str(s["rt"].paths.private(ctid)),
                        "--dbpath", "/var/lib/rpm", "-qa", "--qf",
                        "%{NAME} %{VERSION}-%{RELEASE}\n"], capture_output=True, text=True,
                       check=True, env={"HOME": "/nonexistent", "PATH": "/usr/bin:/bin"})
    return dict(ln.split() for ln in r.stdout.splitlines())


def test_install_and_remove_through_the_hosts_dnf(setup: dict[str, Any]) -> None:
    rt: Runtime = setup["rt"]
    rt.create(16101, NAME)                         # plain: rpm -qa reads private/
    rt.create(16102, NAME, layout_name="overlay")
    rt.start(16102)                                # one running, one stopped
    r = vzpkg(setup, "install", "16101", "16102", "vztest-weak", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    res = results(r)
    assert res[16101]["state"] == "stopped" and res[16102]["state"] == "running"
    assert all("host's dnf" in x["via"] for x in res.values())
    assert "vztest-weak" in rpm_qa(setup, 16101)
    assert sh(rt, 16102, "cat /usr/share/vztest/weak") == (0, "weak\n")   # seen inside
    # owned on disk by the VE's root (0), as the VE's own rpm would have made it
    assert (rt.paths.private(16101) / "usr/share/vztest/weak").stat().st_uid == 0
    r = vzpkg(setup, "list", "16101", "--json")
    names = {p["name"] for p in results(r)[16101]["packages"]}
    assert {"vztest-weak", "vztest-busybox"} <= names
    r = vzpkg(setup, "remove", "16101", "vztest-weak")
    assert r.returncode == 0, r.stderr
    assert "vztest-weak" not in rpm_qa(setup, 16101)
    assert not (rt.paths.private(16101) / "usr/share/vztest/weak").exists()
    # nothing stays mounted on the host for the stopped VE
    assert str(rt.paths.ve_root(16101)) not in Path("/proc/self/mountinfo").read_text()
    rt.stop(16102)


def test_check_updates_shows_the_pending_update(setup: dict[str, Any]) -> None:
    rt: Runtime = setup["rt"]
    rt.create(16103, NAME, layout_name="overlay")
    r = vzpkg(setup, "check-updates", "16103", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert results(r)[16103]["updates"] == []
    moving: Path = setup["moving"]
    # the repository moves on: now it is v2 (a fresh copy: its files are newer)
    newer = moving.with_name(moving.name + "-v2")
    shutil.rmtree(newer, ignore_errors=True)
    shutil.copytree(moving.with_name("v2"), newer, copy_function=shutil.copy)
    moving.unlink()
    moving.symlink_to(newer.name)
    try:
        r = vzpkg(setup, "check-updates", "16103", "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        ups = results(r)[16103]["updates"]
        assert [(u["name"], u["installed"], u["available"]) for u in ups] == [
            ("vztest-c", "1.0-1", "1.0-2")]
        text = vzpkg(setup, "check-updates", "16103")
        assert "vztest-c\t1.0-1 -> 1.0-2" in text.stdout
        r = vzpkg(setup, "update", "16103")
        assert r.returncode == 0, r.stderr
        r = vzpkg(setup, "check-updates", "16103", "--json")
        assert results(r)[16103]["updates"] == []
    finally:   # (the repository stays at v2: repositories never go back in time)
        setup["cleanup"].append(newer)


def test_a_held_rpm_lock_is_reported_and_nothing_changes(setup: dict[str, Any]) -> None:
    rt: Runtime = setup["rt"]
    rt.create(16104, NAME)
    lock = rt.paths.private(16104) / "var/lib/rpm/.rpm.lock"
    before = rpm_qa(setup, 16104)
    with open(lock, "a") as f:                     # another rpm holds the database
        fcntl.lockf(f, fcntl.LOCK_EX)
        r = vzpkg(setup, "install", "16104", "vztest-weak", "--json")
    assert r.returncode == 1
    res = results(r)[16104]
    assert res["kind"] == "locked", res
    assert rpm_qa(setup, 16104) == before


def test_old_mode_ve_is_refused_for_the_hosts_dnf(setup: dict[str, Any]) -> None:
    rt: Runtime = setup["rt"]
    rt.create(16105, NAME, userns=False)
    before = rpm_qa(setup, 16105)
    r = vzpkg(setup, "install", "16105", "vztest-weak", "--json")
    assert r.returncode == 1
    res = results(r)[16105]
    assert "VE_USERNS=no" in res["error"] or "old mode" in res["error"], res
    assert rpm_qa(setup, 16105) == before


def test_a_template_set_adds_its_packages_and_dry_run_changes_nothing(
        setup: dict[str, Any]) -> None:
    rt: Runtime = setup["rt"]
    rt.create(16106, NAME)
    before = rpm_qa(setup, 16106)
    r = vzpkg(setup, "install", "16106", "--set", "tools", "--dry-run", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert rpm_qa(setup, 16106) == before
    r = vzpkg(setup, "install", "16106", "--set", "tools")
    assert r.returncode == 0, r.stdout + r.stderr
    assert set(rpm_qa(setup, 16106)) - set(before) == {"vztest-weak"}
    r = vzpkg(setup, "install", "16106", "--set", "nosuch", "--json")
    assert r.returncode == 1
    assert results(r)[16106]["kind"] == "no-such-set"
