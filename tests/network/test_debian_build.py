"""Build debian-12-x86_64-minimal from the Debian mirror this host's apt uses.

One cold build per session, then the behaviours a user relies on: a working
Debian tree, an honest manifest, byte-identical forced rebuilds, a no-op when
up to date, and failures that leave the previous cache alone.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import assert_user_error, run_cli
from vzpkg.build.payloads import PAYLOAD_DIR, Payloads
from vzpkg.core.settings import SHIPPED_METADATA, load_settings

NAME = "debian-12-x86_64-minimal"
pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86_64 host")


def vzpkg(ws: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return run_cli("vzpkg", ["--workspace", ws, *args])


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def snapshot(d: Path) -> dict[str, tuple[int, int, int]]:
    """path -> (inode, size, mtime_ns) for every file below *d*."""
    return {str(p.relative_to(d)): (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(d.rglob("*")) if p.is_file()}


def override_template(ws: Path, edit: Any) -> None:
    """A workspace copy of the shipped Debian template, changed by *edit*."""
    meta = ws / "metadata"
    meta.mkdir(parents=True, exist_ok=True)
    shutil.copytree(SHIPPED_METADATA / "keys", meta / "keys", dirs_exist_ok=True)
    data = yaml.safe_load((SHIPPED_METADATA / "debian.yaml").read_text())
    edit(data)
    (meta / "debian.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ws")
    (d / "vzpkg.yaml").write_text("cache_dir: caches\n")
    return d


@pytest.fixture(scope="module")
def built(ws: Path) -> dict[str, Any]:
    r = vzpkg(ws, "build", NAME, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)["results"][0]
    assert out["status"] == "built"
    manifest = json.loads((ws / "caches" / f"{NAME}.manifest.json").read_text())
    return {"result": out, "manifest": manifest, "tarball": ws / "caches" / f"{NAME}.tar.zst"}


@pytest.fixture(scope="module")
def tree(built: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tree")
    subprocess.run(["tar", "--zstd", "-xpf", built["tarball"], "-C", d], check=True)
    return d


def chroot(tree: Path, *cmd: str) -> str:
    r = subprocess.run(["chroot", str(tree), *cmd], capture_output=True, text=True,
                       check=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                        "LC_ALL": "C"})
    return r.stdout


def test_the_cache_is_a_working_debian_12(tree: Path, built: dict[str, Any]) -> None:
    listing = subprocess.run(["tar", "--zstd", "-tf", built["tarball"]], capture_output=True,
                             text=True, check=True).stdout.splitlines()
    # /dev ships empty: the runtime mounts a tmpfs with the standard nodes at start
    assert "./dev/" in listing and not [e for e in listing if e.startswith("./dev/") and
                                        e != "./dev/"]
    assert "ii  apt " in chroot(tree, "dpkg", "-l")
    assert chroot(tree, "apt-get", "--version").startswith("apt ")
    osr = (tree / "etc/os-release").read_text()
    assert 'VERSION_ID="12"' in osr
    # finalize: nothing of the host or of the build is baked in
    assert (tree / "etc/machine-id").read_text() == ""
    assert not list(tree.glob("etc/ssh/ssh_host_*"))
    assert not [p for p in (tree / "var/lib/apt/lists").rglob("*") if p.is_file()]
    assert not list((tree / "var/cache/apt/archives").glob("*.deb"))
    assert (tree / "etc/resolv.conf").read_text() == ""
    assert not (tree / "usr/sbin/policy-rc.d").exists()
    sources = (tree / "etc/apt/sources.list").read_text()
    assert "127.0.0.1" not in sources and "bookworm" in sources


def test_manifest_lists_every_installed_package(built: dict[str, Any], tree: Path) -> None:
    m = built["manifest"]
    out = chroot(tree, "dpkg-query", "-W", "-f=${db:Status-Abbrev}|${Package}|${Version}|"
                                           "${Architecture}\n")
    installed = sorted((p, v, a) for s, p, v, a in
                       (line.split("|") for line in out.splitlines()) if s.startswith("ii"))
    listed = sorted((p["name"], p["version"], p["arch"]) for p in m["packages"])
    assert listed == installed
    assert {"iproute2", "procps", "systemd-sysv"} <= {p for p, _, _ in listed}
    assert m["sha256"] == sha256(built["tarball"])
    assert m["size"] == built["tarball"].stat().st_size
    entries = subprocess.run(["tar", "--zstd", "-tf", built["tarball"]], capture_output=True,
                             text=True, check=True).stdout.splitlines()
    assert m["file_count"] == len(entries)
    assert m["plan_digest"] and m["repo_digest"] and m["backend"]


def test_apt_reads_the_gzip_indexes(ws: Path, built: dict[str, Any]) -> None:
    """apt is asked for Packages.gz, which unpacks in half the time of .xz in every
    build (bookworm's main index: 50 MB); the package cache holds what it fetched.
    (The small -updates and -security indexes are published as .xz only.)"""
    magic = {f.read_bytes()[:6] for f in (ws / "caches" / ".pkgcache").glob(
        "*/dists/bookworm/main/binary-*/by-hash/SHA256/*")}
    assert magic and all(m.startswith(b"\x1f\x8b") for m in magic), magic


def test_forced_rebuild_is_byte_identical_and_keeps_old(ws: Path,
                                                        built: dict[str, Any]) -> None:
    first = built["manifest"]["sha256"]
    r = vzpkg(ws, "build", NAME, "--force", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)["results"][0]
    assert res["status"] == "built"
    assert res["sha256"] == first, "a forced rebuild of the same plan differs"
    old = json.loads((ws / "caches" / f"{NAME}-old.manifest.json").read_text())
    assert old["serial"] == built["manifest"]["serial"]
    assert res["serial"] == old["serial"] + 1


def test_every_package_leaves_its_payload(ws: Path, built: dict[str, Any]) -> None:
    """The cold build kept each .deb's unpacked payload (vzpkg.build.payloads): exactly
    what dpkg-deb writes, named by the package's sha256."""
    pkg = ws / "caches" / ".pkgcache"
    debs = sorted(pkg.glob("*/pool/**/*.deb"))
    payloads = Payloads(pkg)
    assert len(debs) >= built["result"]["packages"]
    assert {f.name for f in payloads.dir.glob("*.tar")} == {sha256(d) + ".tar" for d in debs}
    assert not list((payloads.dir / ".views").iterdir()), "a build left its view"
    for deb in debs[:3]:
        assert payloads.path(sha256(deb)).read_bytes() == subprocess.run(
            ["dpkg-deb", "--fsys-tarfile", deb], capture_output=True, check=True).stdout


def test_dpkg_in_the_build_unpacks_from_the_payloads(ws: Path, built: dict[str, Any]) -> None:
    """A file added to the kept payload of less (installed by apt inside the VE, not
    by mmdebstrap's extraction) reaches the cache: dpkg read the payload, not the
    .deb.  The payload is put back afterwards."""
    pkg = ws / "caches" / ".pkgcache"
    deb = next(pkg.glob("*/pool/main/l/less/less_*.deb"))
    kept = Payloads(pkg).path(sha256(deb))
    original = kept.read_bytes()
    marker = "./usr/share/doc/less/from-the-payload-cache"
    try:
        with tarfile.open(kept, "a", format=tarfile.GNU_FORMAT) as t:
            info = tarfile.TarInfo(marker)
            info.size, info.mode, info.mtime = 3, 0o644, 1700000000
            t.addfile(info, io.BytesIO(b"hi\n"))
        r = vzpkg(ws, "build", NAME, "--force", "--json")
        assert r.returncode == 0, r.stderr
        listing = subprocess.run(["tar", "--zstd", "-tf", built["tarball"]],
                                 capture_output=True, text=True, check=True).stdout
        assert marker in listing.splitlines()
    finally:
        kept.write_bytes(original)


def test_without_the_payload_cache_the_tree_is_the_same(ws: Path,
                                                        built: dict[str, Any]) -> None:
    d = ws / "caches" / ".pkgcache" / PAYLOAD_DIR
    before = snapshot(d)
    r = run_cli("vzpkg", ["--workspace", ws, "build", NAME, "--force", "--json"],
                env={"VZPKG_PAYLOAD_CACHE": "0"})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["results"][0]["sha256"] == built["manifest"]["sha256"]
    assert snapshot(d) == before


def test_up_to_date_downloads_and_writes_nothing(ws: Path, built: dict[str, Any]) -> None:
    caches = ws / "caches"
    skip = (".logs", ".locks")       # the build log and the lock holder's pid
    before = {k: v for k, v in snapshot(caches).items() if not k.startswith(skip)}
    pool_before = {k for k in before if "/pool/" in k}
    r = vzpkg(ws, "build", NAME, "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)["results"][0]
    assert res["status"] == "up-to-date"
    after = {k: v for k, v in snapshot(caches).items() if not k.startswith(skip)}
    # the cache and every package file stay exactly as they were
    for k in before:
        if not k.startswith(".pkgcache") or "/pool/" in k:
            assert after.get(k) == before[k], k
    assert {k for k in after if "/pool/" in k} == pool_before


def test_update_without_changes_keeps_the_cache(ws: Path, built: dict[str, Any]) -> None:
    tarball = built["tarball"]
    before = (tarball.stat().st_ino, sha256(tarball))
    r = vzpkg(ws, "update", NAME, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["results"][0]["status"] == "no-updates"
    assert (tarball.stat().st_ino, sha256(tarball)) == before


def test_failing_post_install_leaves_previous_cache_and_nothing_behind(
        ws: Path, built: dict[str, Any], tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(ws, bad, symlinks=True, ignore=shutil.ignore_patterns("metadata"))
    before = snapshot(bad / "caches")
    tarball_state = {k: v for k, v in before.items() if not k.startswith(".")}

    def failing(data: dict[str, Any]) -> None:
        data["scripts"]["post-install"] = "echo post-install-broke >&2\nexit 3\n"
    override_template(bad, failing)
    r = vzpkg(bad, "build", NAME, "--force")
    assert_user_error(r, "post-install", "post-install-broke")
    after = {k: v for k, v in snapshot(bad / "caches").items() if not k.startswith(".")}
    assert after == tarball_state, "the previous cache was touched"
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(bad) not in mounts
    work = load_settings(workspace=bad).work_dir
    assert not list(work.glob(f"{NAME}.*")), "the build's work directory was left behind"
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(bad) not in ps


def test_wrong_pinned_fingerprint_fails_before_anything_is_installed(tmp_path: Path) -> None:
    def wrong(data: dict[str, Any]) -> None:
        for k in data["keys"]:
            if "bookworm-automatic" in k["file"]:
                k["fingerprint"] = "0" * 40
    override_template(tmp_path, wrong)
    r = vzpkg(tmp_path, "build", NAME)
    assert_user_error(r, "debian-bookworm-automatic.asc", "0" * 40)
    assert not (tmp_path / "caches" / ".pkgcache").exists()
    assert not list(tmp_path.glob("caches/*.tar.*"))


def test_offline_with_an_empty_package_cache_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "vzpkg.yaml").write_text("cache_dir: caches\n")
    r = vzpkg(tmp_path, "build", NAME, "--offline")
    assert_user_error(r, "not in the package cache", "without --offline")
    assert not list((tmp_path / "caches").glob("*.tar.*"))


def test_a_killed_build_leaves_nothing_and_the_next_build_cleans_up(
        ws: Path, built: dict[str, Any]) -> None:
    caches = ws / "caches"
    tarball_state = {k: v for k, v in snapshot(caches).items() if not k.startswith(".")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vzpkg.cli.vzpkg", "--workspace", str(ws), "build", NAME,
         "--force"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:                 # progress lines; wait until the VE is busy
        if "bootstrapping" in line:
            break
    time.sleep(3)
    proc.kill()                              # kill -9: no cleanup code runs
    proc.wait()
    time.sleep(1)
    work = load_settings(workspace=ws).work_dir
    mine = work / f"{NAME}.{proc.pid}"
    assert mine.is_dir(), "expected the killed build's work directory to remain until next time"
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(work) not in ps, "a process of the killed build survived"
    assert str(work) not in Path("/proc/self/mountinfo").read_text()
    r = vzpkg(ws, "build", NAME)             # up to date, and it removes the leftovers
    assert r.returncode == 0, r.stderr
    assert not mine.exists()
    assert {k: v for k, v in snapshot(caches).items() if not k.startswith(".")} \
        == tarball_state


def test_the_debootstrap_backend_builds_a_working_debian_too(tmp_path: Path) -> None:
    """Same template, the other Debian backend (--backend), its own cache dir."""
    (tmp_path / "vzpkg.yaml").write_text("cache_dir: caches\n")
    r = vzpkg(tmp_path, "build", NAME, "--backend", "debootstrap", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)["results"][0]
    assert res["status"] == "built"
    m = json.loads((tmp_path / "caches" / f"{NAME}.manifest.json").read_text())
    assert m["backend"] == "debootstrap" and "debootstrap" in m["tools"]
    tree = tmp_path / "tree"
    tree.mkdir()
    subprocess.run(["tar", "--zstd", "-xpf", tmp_path / "caches" / f"{NAME}.tar.zst",
                    "-C", tree], check=True, capture_output=True)
    assert 'VERSION_ID="12"' in (tree / "etc/os-release").read_text()
    assert {"iproute2", "procps"} <= {p["name"] for p in m["packages"]}
    assert "ii  iproute2 " in chroot(tree, "dpkg", "-l")
    sources = (tree / "etc/apt/sources.list").read_text()
    assert "127.0.0.1" not in sources and "bookworm-security" in sources
    assert not (tree / "etc/apt/vzpkg-build-keyring.gpg").exists()


def test_prune_keeps_what_an_offline_rebuild_needs(ws: Path, built: dict[str, Any]) -> None:
    """After `vzpkg prune`, the package cache still holds every package and index of
    the cache (epochs and quoted file names included): a forced offline rebuild works
    and installs the same packages."""
    r = vzpkg(ws, "prune", "--json")
    assert r.returncode == 0, r.stderr
    kept = json.loads(r.stdout)["kept_packages"]
    assert kept >= len(built["manifest"]["packages"])
    r = vzpkg(ws, "build", NAME, "--offline", "--force", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)["results"][0]
    assert res["status"] == "built" and res["downloaded_bytes"] == 0
    now = json.loads((ws / "caches" / f"{NAME}.manifest.json").read_text())
    assert now["packages"] == built["manifest"]["packages"]
