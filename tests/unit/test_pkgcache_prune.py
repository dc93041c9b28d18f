"""vzpkg prune: the package cache keeps what the caches were built from, nothing else."""

from __future__ import annotations

import fcntl
import hashlib
import json
from pathlib import Path

from tests.conftest import assert_user_error, run_cli
from tests.mirror_helpers import make_cache
from vzpkg.core.types import InstalledPackage

DEB = "deb-12-x86_64-minimal"
RPM = "rpmdist-1-x86_64-minimal"


def _files(root: Path) -> set[str]:
    """Every file below *root* but the lock file."""
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and p.name != ".lock"}


def _fill(cache: Path) -> tuple[set[str], set[str]]:
    """A store with a Debian-like and an RPM-like cache, and a package cache with what
    they need and what they do not; returns (kept, removed) relative paths."""
    make_cache(cache, DEB, 4096, packages=(
        InstalledPackage("hello", "1.0-1", "amd64"),
        InstalledPackage("libx1", "1:2.0+dfsg-1~deb12u1", "amd64"),   # epoch, quoted chars
        InstalledPackage("base-files", "12.4", "all")))
    make_cache(cache, RPM, 4096, packages=(InstalledPackage("vz-a", "1.0-1", "noarch"),))
    pkg = cache / ".pkgcache"
    current, superseded = hashlib.sha256(b"new").hexdigest(), hashlib.sha256(b"old").hexdigest()
    files = {
        "0123456789abcdef/pool/main/h/hello/hello_1.0-1_amd64.deb": True,
        "0123456789abcdef/pool/main/h/hello/hello_0.9-1_amd64.deb": False,
        "0123456789abcdef/pool/main/libx/libx1_2.0%2bdfsg-1%7edeb12u1_amd64.deb": True,
        "0123456789abcdef/pool/main/b/base-files/base-files_12.4_all.deb": True,
        "0123456789abcdef/pool/main/e/eatmydata/eatmydata_130-2_all.deb": False,
        "0123456789abcdef/pool/main/h/hello/.part-x1y2z3": False,
        f"0123456789abcdef/dists/stable/main/binary-amd64/by-hash/SHA256/{current}": True,
        f"0123456789abcdef/dists/stable/main/binary-amd64/by-hash/SHA256/{superseded}": False,
        "0123456789abcdef/dists/stable/InRelease": True,
        "dnf/rpmdist-00/vz-11/packages/vz-a-1.0-1.noarch.rpm": True,
        "dnf/rpmdist-00/vz-11/packages/vz-a-0.9-1.noarch.rpm": False,
        "dnf/rpmdist-00/vz-11/repodata/repomd.xml": True,
    }
    for rel in files:
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_bytes(b"x" * 100)
    (pkg / "0123456789abcdef/dists/stable/InRelease").write_text(
        f"Date: now\nSHA256:\n {current} 3 main/binary-amd64/Packages.gz\n")
    return {k for k, v in files.items() if v}, {k for k, v in files.items() if not v}


def test_prune_keeps_what_the_caches_came_from(tmp_path: Path) -> None:
    cache = tmp_path / "caches"
    kept, gone = _fill(cache)
    pkg = cache / ".pkgcache"
    before = _files(pkg)
    r = run_cli("vzpkg", ["--cache-dir", cache, "prune", "--dry-run", "--json"])
    assert r.returncode == 0, r.stderr
    dry = json.loads(r.stdout)
    assert dry["dry_run"] and {str(Path(p).relative_to(pkg)) for p in dry["removed"]} == gone
    assert _files(pkg) == before, "a dry run removed something"
    r = run_cli("vzpkg", ["--cache-dir", cache, "prune"])
    assert r.returncode == 0, r.stderr
    assert _files(pkg) == kept
    assert f"removed {len(gone)} files" in r.stdout and "kept 4 package files" in r.stdout
    again = run_cli("vzpkg", ["--cache-dir", cache, "prune", "--json"])
    assert json.loads(again.stdout)["removed"] == []


def test_prune_waits_for_no_build_and_touches_nothing_meanwhile(tmp_path: Path) -> None:
    cache = tmp_path / "caches"
    _fill(cache)
    pkg = cache / ".pkgcache"
    before = _files(pkg)
    with open(pkg / ".lock", "a") as lock:          # what a running build holds
        fcntl.flock(lock, fcntl.LOCK_SH)
        r = run_cli("vzpkg", ["--cache-dir", cache, "prune"])
    assert_user_error(r, "is in use by a build", "hint: run it again")
    assert _files(pkg) == before


def test_a_damaged_manifest_stops_the_prune(tmp_path: Path) -> None:
    cache = tmp_path / "caches"
    _fill(cache)
    (cache / f"{RPM}.manifest.json").write_text("{not json")
    before = _files(cache / ".pkgcache")
    r = run_cli("vzpkg", ["--cache-dir", cache, "prune"])
    assert_user_error(r, f"cannot tell what cache {RPM} needs", "nothing was pruned")
    assert _files(cache / ".pkgcache") == before
