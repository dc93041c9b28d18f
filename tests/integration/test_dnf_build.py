"""``vzpkg build`` / ``vzpkg update`` of the tests' signed RPM distribution,
through the command line as a user runs it (needs root and the build pipeline).

One cold build per module, then: a VE tree that runs /bin/sh, shows the %post
scriptlet and the post-install script, and whose rpmdb lists every package;
up-to-date and warm builds that download no package; every bad input fails
with a clear error and leaves the previous cache untouched; update upgrades
and repacks only when a package changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.rpm_helpers import (
    ServedDistribution,
    prestarted_dnfs,
    rpm_dist_fixture,  # noqa: F401  (the session fixture rpm_dist)
)
from tests.rpmrepo.builder import MINIMAL

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

NAME = "vztest-1-x86_64-minimal"


def vzpkg(ws: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vzpkg.cli.vzpkg", "--workspace", str(ws),
                           "--cache-dir", str(ws.parent / "caches"), *args],
                          capture_output=True, text=True, check=False, timeout=600)


def result(r: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert r.returncode == 0, r.stdout + r.stderr
    out: dict[str, Any] = json.loads(r.stdout)["results"][0]
    return out


def user_error(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode != 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in r.stderr, f"{n!r} not in:\n{r.stderr}"


def cache_state(caches: Path) -> dict[str, tuple[int, str]]:
    """name -> (inode, sha256) of every file in the cache directory itself."""
    return {p.name: (p.stat().st_ino, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(caches.iterdir()) if p.is_file()}


def unpack(tarball: Path, dest: Path) -> Path:
    dest.mkdir()
    subprocess.run(["tar", "--zstd", "-xpf", str(tarball), "-C", str(dest)], check=True)
    return dest


def rpm_qa(root: Path) -> dict[str, str]:
    r = subprocess.run(["rpm", "--root", str(root), "--dbpath", "/var/lib/rpm", "-qa",
                        "--qf", "%{NAME} %{VERSION}-%{RELEASE}\n"], capture_output=True,
                       text=True, check=True, env={"HOME": "/nonexistent", "PATH": "/usr/bin:/bin"})
    return dict(ln.split() for ln in r.stdout.splitlines() if not ln.startswith("gpg-pubkey"))


@pytest.fixture(scope="module")
def ws(rpm_dist: ServedDistribution, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rpm_dist.workspace(tmp_path_factory.mktemp("rpmbuild") / "ws")


@pytest.fixture(scope="module")
def built(ws: Path) -> dict[str, Any]:
    out = result(vzpkg(ws, "build", NAME, "--json"))
    assert out["status"] == "built"
    return out


def test_cache_runs_sh_shows_scriptlets_and_lists_every_package(
        ws: Path, built: dict[str, Any], tmp_path: Path) -> None:
    caches = ws.parent / "caches"
    manifest = json.loads((caches / f"{NAME}.manifest.json").read_text())
    assert manifest["backend"] == "dnf"
    assert {"dnf", "rpm"} <= set(manifest["tools"])
    pkgs = {p["name"]: (p["version"], p["arch"]) for p in manifest["packages"]}
    assert sorted(pkgs) == sorted(MINIMAL)
    assert pkgs["vztest-busybox"] == ("1.0-1", "x86_64")
    assert pkgs["vztest-a"] == ("1.0-1", "noarch")

    tree = unpack(caches / f"{NAME}.tar.zst", tmp_path / "tree")
    r = subprocess.run(["chroot", str(tree), "/bin/sh", "-c", "echo hi from $(uname -s)"],
                       capture_output=True, text=True, check=True)
    assert r.stdout == "hi from Linux\n"
    assert (tree / "etc/vztest-hello-post").read_text() == "hello %post ran: 1\n"
    assert (tree / "etc/vztest-post-install").read_text() == "post-install ran in the VE\n"
    assert sorted(rpm_qa(tree)) == sorted(MINIMAL)
    # no package-manager leftovers in the cache
    assert list(tree.glob("var/cache/dnf/*")) == []
    assert list(tree.glob("var/log/dnf*")) == []
    assert list(tree.rglob("*.sqlite-wal")) == []
    assert not (tree / "root/.rpmdb").exists()


def test_unchanged_is_up_to_date_and_warm_downloads_no_package(
        ws: Path, built: dict[str, Any], rpm_dist: ServedDistribution) -> None:
    mark = len(rpm_dist.server.requests)
    dnfs = set(prestarted_dnfs())
    log = ws.parent / "caches" / ".logs" / f"{NAME}.log"
    assert result(vzpkg(ws, "build", NAME, "--json"))["status"] == "up-to-date"
    assert "dnf" not in log.read_text()          # and no dnf was started for it
    forced = result(vzpkg(ws, "build", NAME, "--force", "--json"))
    assert forced["status"] == "built"
    assert [p for p in rpm_dist.requested_since(mark) if p.endswith(".rpm")] == []
    # the command line started dnf before loading the build machinery, and the
    # build took that one
    assert "(dnf was started by the command line)" in log.read_text()
    assert log.read_text().count("(pre-started)") == 1
    assert set(prestarted_dnfs()) <= dnfs
    mark = len(rpm_dist.server.requests)
    offline = result(vzpkg(ws, "build", NAME, "--force", "--offline", "--json"))
    assert offline["status"] == "built"
    assert rpm_dist.requested_since(mark) == []


@pytest.mark.parametrize(("variant", "needles"), [
    ("unsigned", ("dnf install", "vztest-b-1.0-1.noarch.rpm is not signed")),
    ("otherkey", ("dnf install", "signed by a key the template does not pin")),
    ("badsum", ("dnf install", "does not match the checksum in the repository metadata")),
    ("unresolvable", ("dnf install", "nothing provides vztest-c")),
    ("down", ("repository", "connection refused")),
    ("wrong-pin", ("vztest.yaml:", "keys[0].fingerprint", "not the pinned")),
])
def test_bad_input_fails_clearly_and_keeps_the_cache(
        ws: Path, built: dict[str, Any], rpm_dist: ServedDistribution, tmp_path: Path,
        variant: str, needles: tuple[str, ...]) -> None:
    caches = ws.parent / "caches"
    before = cache_state(caches)
    dnfs = set(prestarted_dnfs())
    if variant == "wrong-pin":
        bad_ws = rpm_dist.workspace(ws.parent / "ws-wrong-pin",
                                    fingerprint=rpm_dist.dist.other_key.fingerprint)
        r = vzpkg(bad_ws, "build", NAME, "--force")
    else:
        url = rpm_dist.down_url if variant == "down" else rpm_dist.url(variant)
        r = vzpkg(ws, "build", NAME, "--force", "--set", f"mirrors.vztest={url}")
    user_error(r, *needles)
    assert cache_state(caches) == before
    assert list(caches.glob(".work/*")) == []
    with open("/proc/self/mountinfo") as f:
        assert str(caches) not in f.read()
    assert set(prestarted_dnfs()) <= dnfs    # a dnf started early and not used is gone


def test_update_repacks_only_when_a_package_changed(
        ws: Path, built: dict[str, Any], rpm_dist: ServedDistribution, tmp_path: Path) -> None:
    caches = ws.parent / "caches"
    same = result(vzpkg(ws, "update", NAME, "--json"))
    assert same["status"] == "no-updates"
    before = json.loads((caches / f"{NAME}.manifest.json").read_text())
    upd = result(vzpkg(ws, "update", NAME, "--set", f"mirrors.vztest={rpm_dist.url('v2')}",
                       "--json"))
    assert upd["status"] == "updated"
    after = json.loads((caches / f"{NAME}.manifest.json").read_text())
    assert after["serial"] > before["serial"]
    versions = {p["name"]: p["version"] for p in after["packages"]}
    assert versions["vztest-c"] == "1.0-2"
    old = json.loads((caches / f"{NAME}-old.manifest.json").read_text())
    assert old["sha256"] == before["sha256"]           # the previous cache is kept as -old
    tree = unpack(caches / f"{NAME}.tar.zst", tmp_path / "tree")
    assert rpm_qa(tree)["vztest-c"] == "1.0-2"
    assert (tree / "usr/share/vztest/c").read_text() == "c 1.0-2\n"
