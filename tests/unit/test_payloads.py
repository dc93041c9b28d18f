"""The unpacked-payload cache: real .debs made with dpkg-deb, the real helper script,
and (as root) the real mmdebstrap hook commands in the real build sandbox."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.mirror_helpers import make_cache
from vzpkg.build.backends.mmdebstrap import MOUNT_HOOK, TREE_MOUNTS, UMOUNT_HOOK
from vzpkg.build.payloads import VE_DIR, VIEWS, BuildPayloads, Payloads, enabled
from vzpkg.build.sandbox import KEEP, TreeMounts, tool_command
from vzpkg.core.files import sha256_file
from vzpkg.core.types import InstalledPackage

needs_dpkg = pytest.mark.skipif(not shutil.which("dpkg-deb"), reason="needs dpkg-deb")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts)")


def make_deb(tmp: Path, name: str, version: str, payload: bytes) -> Path:
    """A real binary package with one file, /usr/share/NAME/data."""
    src = tmp / f"src-{name}-{version}"
    (src / "DEBIAN").mkdir(parents=True)
    (src / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: vzpkg tests <tests@invalid>\nDescription: test package\n")
    (src / f"usr/share/{name}").mkdir(parents=True)
    (src / f"usr/share/{name}/data").write_bytes(payload)
    deb = tmp / f"{name}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(src), str(deb)],
                   check=True, capture_output=True)
    return deb


def fsys_tarfile(deb: Path) -> bytes:
    return subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True,
                          capture_output=True).stdout


def helper(bp: BuildPayloads, *args: str | Path) -> subprocess.CompletedProcess[bytes]:
    """The build's dpkg-deb on the host, as mmdebstrap finds it on PATH."""
    return subprocess.run([str(bp.host_bin / "dpkg-deb"), *map(str, args)],
                          capture_output=True, check=False)


@needs_dpkg
def test_a_payload_is_what_dpkg_deb_writes_named_by_the_packages_bytes(tmp_path: Path
                                                                        ) -> None:
    deb = make_deb(tmp_path, "hello", "1.0", b"hello\n" * 1000)
    payloads = Payloads(tmp_path / "pkgcache")
    sha = payloads.make(deb)
    assert sha == hashlib.sha256(deb.read_bytes()).hexdigest()
    assert payloads.path(sha).read_bytes() == fsys_tarfile(deb)
    assert payloads.has(deb)
    assert oct(payloads.dir.stat().st_mode & 0o777) == "0o700"
    assert not list(payloads.dir.glob(".part-*"))


@needs_dpkg
def test_the_helper_serves_the_payload_of_exactly_these_bytes(tmp_path: Path) -> None:
    a = make_deb(tmp_path / "a", "hello", "1.0", b"first\n")
    b = make_deb(tmp_path / "b", "hello", "1.0", b"second\n")   # same name, other bytes
    payloads = Payloads(tmp_path / "pkgcache")
    sha = payloads.make(a)
    assert sha is not None
    # what the helper writes comes from the payload file: mark it to see that
    payloads.path(sha).write_bytes(b"from the payload cache")
    bp = BuildPayloads(payloads, tmp_path / "work")
    try:
        bp.add(a)
        bp.add(b)
        bp.close(finish=True)
        bp = BuildPayloads(payloads, tmp_path / "work2")    # b's payload is kept now
        r = helper(bp, "--fsys-tarfile", a)
        assert r.stdout == fsys_tarfile(a), "a payload outside this build's view was used"
        bp.add(a)
        _settle(bp, 1)
        r = helper(bp, "--fsys-tarfile", a)
        assert (r.returncode, r.stdout) == (0, b"from the payload cache")
        r = helper(bp, "--fsys-tarfile", b)      # kept, but not in this build's view
        assert (r.returncode, r.stdout) == (0, fsys_tarfile(b))
        # every other request goes to the real dpkg-deb, errors included
        out = tmp_path / "control"
        r = helper(bp, "--control", a, out)
        assert r.returncode == 0 and "Package: hello" in (out / "control").read_text()
        r = helper(bp, "--fsys-tarfile", tmp_path / "missing.deb")
        assert r.returncode != 0 and b"missing.deb" in r.stderr
    finally:
        bp.close(finish=False)
    assert not bp.view.exists()


def _settle(bp: BuildPayloads, n: int) -> None:
    deadline = time.monotonic() + 10
    while len(list(bp.view.iterdir())) < n and time.monotonic() < deadline:
        time.sleep(0.01)


@needs_dpkg
def test_a_package_dpkg_deb_cannot_read_gets_no_payload(tmp_path: Path) -> None:
    deb = make_deb(tmp_path, "hello", "1.0", os.urandom(20000))
    broken = tmp_path / "broken.deb"
    broken.write_bytes(deb.read_bytes()[:-5000])
    payloads = Payloads(tmp_path / "pkgcache")
    assert payloads.make(broken) is None
    assert list(payloads.dir.iterdir()) == []
    assert payloads.make(deb) is not None


@needs_dpkg
def test_payloads_are_made_beside_the_build_and_linked_into_its_view(tmp_path: Path
                                                                     ) -> None:
    debs = [make_deb(tmp_path, f"p{i}", "1.0", os.urandom(5000)) for i in range(3)]
    payloads = Payloads(tmp_path / "pkgcache")
    bp = BuildPayloads(payloads, tmp_path / "work")
    for d in [*debs, debs[0]]:          # the proxy may serve a package twice
        bp.add(d)
    _settle(bp, 3)
    assert {f.name for f in bp.view.iterdir()} == {f"{sha256_file(d)}.tar" for d in debs}
    bp.close(finish=True)
    assert (bp.made, bp.ready) == (3, 0)
    assert all(payloads.has(d) for d in debs)
    assert not bp.view.exists()
    # the next build finds them kept; one that is dropped leaves nothing half-written
    more = [make_deb(tmp_path, f"q{i}", "1.0", os.urandom(5000)) for i in range(5)]
    bp = BuildPayloads(payloads, tmp_path / "work2")
    for d in [*debs, *more]:
        bp.add(d)
    bp.close(finish=False)
    assert not list(payloads.dir.glob(".part-*"))
    assert not list((payloads.dir / VIEWS).iterdir())


def test_temporary_files_of_dead_builds_are_removed(tmp_path: Path) -> None:
    payloads = Payloads(tmp_path)
    payloads.dir.mkdir()
    proc = subprocess.Popen(["true"])
    proc.wait()
    gone = payloads.dir / f".part-{proc.pid}-abc"
    mine = payloads.dir / f".part-{os.getpid()}-def"
    kept = payloads.dir / ("0" * 64 + ".tar")
    for f in (gone, mine, kept):
        f.write_bytes(b"x")
    gone_view = payloads.dir / VIEWS / f"{proc.pid}-xyz"
    my_view = payloads.dir / VIEWS / f"{os.getpid()}-xyz"
    for d in (gone_view, my_view):
        d.mkdir(parents=True)
        (d / "a.tar").write_bytes(b"x")
    payloads.remove_stale()
    assert not gone.exists() and mine.exists() and kept.exists()
    assert not gone_view.exists() and my_view.exists()


def test_the_payload_cache_can_be_turned_off() -> None:
    assert enabled({}, {})
    assert not enabled({"VZPKG_PAYLOAD_CACHE": "0"}, {})
    assert not enabled({"VZPKG_PAYLOAD_CACHE": "off"}, {"payload_cache": True})
    assert enabled({"VZPKG_PAYLOAD_CACHE": "1"}, {"payload_cache": False})
    assert not enabled({}, {"payload_cache": False})


def _as_mmdebstrap(script: str, work: Path, root: Path, mounts: TreeMounts = TREE_MOUNTS,
                   ro: tuple[Path, ...] = ()) -> subprocess.CompletedProcess[str]:
    """*script* run as mmdebstrap is: a host tool in the build sandbox, its tree
    mounted when a hook asks."""
    cmd = tool_command(["sh", "-ec", script], work=work, tree=root, tree_mounts=mounts,
                       ro=ro, caps=KEEP, serve=True)
    return subprocess.run(cmd.argv, capture_output=True, text=True, check=False,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


def _hook(arg: str) -> str:
    """A mmdebstrap --*-hook=COMMAND as mmdebstrap runs it: sh -c COMMAND exec ROOT."""
    return f"sh -c {shlex.quote(arg.split('=', 1)[1])} exec \"$ROOT\""


@needs_root
@needs_dpkg
def test_the_helper_is_mounted_read_only_in_the_tree_and_removed_after(tmp_path: Path
                                                                       ) -> None:
    deb = make_deb(tmp_path, "hello", "1.0", b"hello\n")
    payloads = Payloads(tmp_path / "pkgcache")
    sha = payloads.make(deb)
    assert sha is not None
    work = tmp_path / "work"
    h = BuildPayloads(payloads, work)
    h.add(deb)
    _settle(h, 1)
    kept = Path(f"{sha}.tar")
    # kept for another build's package: not this build's to see
    other = payloads.make(make_deb(tmp_path / "o", "private", "1.0", b"secret\n"))
    [dpkg_path] = h.mmdebstrap_options()
    assert dpkg_path == f'--aptopt=DPkg::Path "/{VE_DIR}:/usr/sbin:/usr/bin:/sbin:/bin";'
    root = work / "root"
    root.mkdir()
    shutil.copy(deb, root / "hello.deb")
    ve = f'"$ROOT/{VE_DIR}"'
    mounts = TreeMounts(mounts=TREE_MOUNTS.mounts, dev_extra=TREE_MOUNTS.dev_extra,
                        dev_links=(), binds=tuple(h.ve_binds()))
    r = _as_mmdebstrap(f"""
        ROOT={shlex.quote(str(root))}
        {_hook(MOUNT_HOOK)}
        test -x {ve}/dpkg-deb
        test -f {ve}/payloads/{kept.name}
        if test -e {ve}/payloads/{other}.tar; then echo other-visible; fi
        if ls "$ROOT/{VE_DIR}/payloads" | grep -qv {kept.name}; then echo more-visible; fi
        if touch {ve}/payloads/new 2>/dev/null; then echo payloads-writable; fi
        if touch {ve}/new 2>/dev/null; then echo helper-writable; fi
        if test -e {shlex.quote(str(payloads.dir))}/{other}.tar; then echo cache-visible; fi
        PATH={shlex.quote(h.path("/usr/bin:/bin"))} sh -c 'command -v dpkg-deb'
        {_hook(UMOUNT_HOOK)}
        test ! -e {ve} && echo removed
        """, work, root, mounts, ro=(h.view,))
    assert r.returncode == 0, r.stderr
    assert "writable" not in r.stdout and "visible" not in r.stdout
    assert r.stdout.splitlines()[0] == str(h.host_bin / "dpkg-deb")
    assert r.stdout.splitlines()[-1] == "removed"
    # the helper inside the tree names the mount point, never a host path
    ve_helper = (h.ve_src / "dpkg-deb").read_text()
    assert f"/{VE_DIR}/payloads/" in ve_helper and str(tmp_path) not in ve_helper
    assert not os.path.ismount(root / VE_DIR)
    h.close(finish=True)


@needs_root
def test_maintainer_scripts_get_a_private_dev_shm(tmp_path: Path) -> None:
    """mmdebstrap runs without the host's /dev/shm: the tree's /dev, mounted by
    the sandbox once its hook asks, has a tmpfs of its own."""
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm on this host")
    marker = Path("/dev/shm") / f"vzpkg-test-{os.getpid()}-{time.monotonic_ns()}"
    marker.write_text("host")
    work = tmp_path / "work"
    root = work / "root"
    root.mkdir(parents=True)
    try:
        r = _as_mmdebstrap(f"""
            ROOT={shlex.quote(str(root))}
            test -e /dev/shm/{marker.name} && echo host-visible-to-the-tool
            {_hook(MOUNT_HOOK)}
            test -e "$ROOT/dev/shm/{marker.name}" && echo host-visible-during
            touch "$ROOT/dev/shm/scratch"
            {_hook(UMOUNT_HOOK)}
            test -e "$ROOT/dev/shm/scratch" && echo kept-after
            echo done
            """, work, root)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["done"]
        assert not Path("/dev/shm/scratch").exists()
    finally:
        marker.unlink()


@needs_dpkg
def test_prune_drops_the_payloads_of_the_packages_it_drops(tmp_path: Path) -> None:
    cache = tmp_path / "caches"
    make_cache(cache, "deb-12-x86_64-minimal", 4096,
               packages=(InstalledPackage("hello", "1.0", "all"),))
    pool = cache / ".pkgcache/0123456789abcdef/pool/main/h/hello"
    pool.mkdir(parents=True)
    keep = make_deb(pool, "hello", "1.0", b"kept\n")
    drop = make_deb(pool, "hello", "0.9", b"dropped\n")
    for d in pool.glob("src-*"):
        shutil.rmtree(d)
    payloads = Payloads(cache / ".pkgcache")
    kept_sha, dropped_sha = payloads.make(keep), payloads.make(drop)
    assert kept_sha and dropped_sha
    kept, dropped = payloads.path(kept_sha), payloads.path(dropped_sha)
    part = payloads.dir / ".part-1-x"
    part.write_bytes(b"x")
    r = run_cli("vzpkg", ["--cache-dir", cache, "prune", "--dry-run"])
    assert r.returncode == 0, r.stderr
    assert dropped.exists() and str(dropped) in r.stdout
    r = run_cli("vzpkg", ["--cache-dir", cache, "prune"])
    assert r.returncode == 0, r.stderr
    assert kept.exists() and keep.exists()
    assert not dropped.exists() and not drop.exists() and not part.exists()
    assert sha256_file(keep) + ".tar" == kept.name


@needs_root
@needs_dpkg
def test_no_payload_is_made_on_a_nearly_full_disk(tmp_path: Path) -> None:
    deb = make_deb(tmp_path, "hello", "1.0", b"hello\n")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "vzpkg-test", str(small)],
                   check=True)
    try:
        payloads = Payloads(small / "pkgcache")
        assert payloads.make(deb) is None
        assert list(payloads.dir.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)
