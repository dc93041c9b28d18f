"""`vzpkg import` end to end: real tar-made tarballs in, verified caches out."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import libarchive
import pytest

from vzpkg.core.types import InstalledPackage
from vzpkg.store.cachestore import CacheStore

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="import needs root")]

ROOT = Path(__file__).resolve().parents[2]
NAME = "imported-1.0-x86_64-minimal"
DPKG_STATUS = ("Package: base-files\nStatus: install ok installed\nArchitecture: amd64\n"
               "Version: 12.4\n\nPackage: gone\nStatus: deinstall ok config-files\n"
               "Architecture: amd64\nVersion: 1\n")


def vzpkg(cache: Path, *args: str, env: dict[str, str] | None = None
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vzpkg.cli.vzpkg", "--cache-dir",
                           str(cache), *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, check=False)


def make_tree(root: Path) -> Path:
    for d in ("bin", "etc", "var/lib/dpkg", "usr/bin", "home/user"):
        (root / d).mkdir(parents=True)
    (root / "etc/os-release").write_text('ID=imported\nVERSION_ID="1.0"\n')
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "var/lib/dpkg/status").write_text(DPKG_STATUS)
    (root / "usr/bin/tool").write_bytes(os.urandom(3000))
    (root / "usr/bin/tool").chmod(0o4755)
    os.link(root / "usr/bin/tool", root / "usr/bin/tool-link")
    (root / "bin/sh").symlink_to("/usr/bin/tool")
    (root / "home/user/notes").write_text("mine\n")
    os.chown(root / "home/user/notes", 1000, 1000)
    os.chown(root / "home/user", 1000, 1000)
    for i, p in enumerate(sorted(root.rglob("*"))):
        os.utime(p, (1600000000 + i, 1600000000 + i), follow_symlinks=False)
    os.utime(root, (1600000000, 1600000000))
    return root


TAR_FLAGS = {"tar": [], "tar.gz": ["-z"], "tar.xz": ["-J"], "tar.zst": ["--zstd"]}


def tar_of(tree: Path, dest: Path, kind: str) -> Path:
    subprocess.run(["tar", "-c", *TAR_FLAGS[kind], "-f", str(dest), "-C", str(tree), "."],
                   check=True)
    return dest


Entry = tuple[str, int, int, int, int, int, str, int]


def listing(path: Path) -> tuple[set[Entry], set[frozenset[str]]]:
    """Entries (hard links shown as their target's file) and the hard-link groups."""
    attrs: dict[str, Entry] = {}
    links: dict[str, str] = {}
    with libarchive.file_reader(str(path)) as entries:
        for e in entries:
            name = e.pathname.removeprefix("./").rstrip("/")
            if name in ("", "."):
                continue
            if e.islnk:
                links[name] = e.linkpath.removeprefix("./")
                continue
            attrs[name] = (name, e.filetype, e.mode, e.uid, e.gid,
                           e.size if e.isreg else 0, e.linkpath or "", int(e.mtime))
    groups: dict[str, set[str]] = {}
    for name, target in links.items():
        attrs[name] = (name, *attrs[target][1:])
        groups.setdefault(target, {target}).add(name)
    return set(attrs.values()), {frozenset(g) for g in groups.values()}


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name != ".locks") \
        if cache.exists() else []


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("tree") / "root")


def test_import_each_format_gives_the_same_cache(tree: Path, tmp_path: Path) -> None:
    cache = tmp_path / "caches"
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    digests = set()
    for kind in TAR_FLAGS:
        src = tar_of(tree, tmp_path / f"rootfs.{kind}", kind)
        r = vzpkg(cache, "import", str(src), "--name", NAME, "--json", env=env)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert Path(out["tarball"]) == cache / f"{NAME}.tar.zst"
        assert listing(Path(out["tarball"])) == listing(src)
        digests.add(out["sha256"])
    # the same tree in any container format repacks to byte-identical caches
    assert len(digests) == 1
    store = CacheStore(cache)
    m = store.manifest(NAME)
    assert m is not None and m.serial == 4 and m.backend == "import"
    assert m.packages == (InstalledPackage("base-files", "12.4", "amd64"),)
    assert m.source_date == max(x[-1] for x in listing(src)[0])
    assert m.sha256 == hashlib.sha256((cache / m.tarball).read_bytes()).hexdigest()
    assert (store.old_manifest(NAME) or m).serial == 3
    r = vzpkg(cache, "verify", NAME)
    assert r.returncode == 0 and r.stdout.startswith(f"{NAME}: OK"), r.stdout + r.stderr
    assert leftovers(cache) == sorted([f"{NAME}.manifest.json", f"{NAME}.tar.zst",
                                       f"{NAME}-old.manifest.json", f"{NAME}-old.tar.zst"])


def test_import_xz_compression_and_source_date(tree: Path, tmp_path: Path) -> None:
    cache = tmp_path / "caches"
    src = tar_of(tree, tmp_path / "rootfs.tar", "tar")
    env = dict(os.environ, SOURCE_DATE_EPOCH="1500000000")
    r = vzpkg(cache, "import", str(src), "--name", NAME, "--compression", "xz", env=env)
    assert r.returncode == 0, r.stderr
    m = CacheStore(cache).manifest(NAME)
    assert m is not None and m.tarball == f"{NAME}.tar.xz" and m.source_date == 1500000000
    assert {e[-1] for e in listing(cache / m.tarball)[0]} == {1500000000}


def _add(tf: tarfile.TarFile, name: str, *, kind: bytes = tarfile.REGTYPE,
         data: bytes = b"x", link: str = "", major: int = 0, minor: int = 0) -> None:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = link
    ti.devmajor, ti.devminor = major, minor
    ti.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    ti.size = len(data) if kind == tarfile.REGTYPE else 0
    tf.addfile(ti, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


Spec = tuple[str, bytes, str, int, int]      # name, type, link target, major, minor
D, F, L, H, B = (tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                 tarfile.BLKTYPE)
UNSAFE: dict[str, tuple[list[Spec], str]] = {
    "dotdot": ([("etc", D, "", 0, 0), ("etc/../../escape", F, "", 0, 0)],
               "etc/../../escape"),
    "absolute": ([("/etc/evil", F, "", 0, 0)], "/etc/evil"),
    "through-symlink": ([("lnk", L, "/tmp", 0, 0), ("lnk/evil", F, "", 0, 0)], "lnk/evil"),
    "hardlink-outside": ([("pw", H, "../../etc/passwd", 0, 0)], "pw"),
    "device-node": ([("dev", D, "", 0, 0), ("dev/sda", B, "", 8, 0)], "dev/sda"),
}


def _unsafe_tar(path: Path, specs: list[Spec]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, kind, link, major, minor in specs:
            _add(tf, name, kind=kind, link=link, major=major, minor=minor)
    return path


@pytest.mark.parametrize("kind", sorted(UNSAFE))
def test_unsafe_tarball_is_refused(kind: str, tree: Path, tmp_path: Path) -> None:
    cache = tmp_path / "caches"
    good = tar_of(tree, tmp_path / "good.tar", "tar")
    assert vzpkg(cache, "import", str(good), "--name", NAME).returncode == 0
    before = {p: p.read_bytes() for p in cache.iterdir() if p.is_file()}
    specs, entry = UNSAFE[kind]
    bad = _unsafe_tar(tmp_path / "bad.tar", specs)
    r = vzpkg(cache, "import", str(bad), "--name", NAME)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert "vzpkg: error: " in r.stderr and entry in r.stderr, r.stderr
    assert {p: p.read_bytes() for p in cache.iterdir() if p.is_file()} == before
    # into an empty cache directory: nothing at all is left behind
    empty = tmp_path / "empty"
    r = vzpkg(empty, "import", str(bad), "--name", NAME)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert leftovers(empty) == []


def test_bad_name_and_missing_file(tmp_path: Path) -> None:
    r = vzpkg(tmp_path, "import", str(tmp_path / "nope.tar"), "--name", "Bad")
    assert r.returncode != 0 and "not a valid cache name" in r.stderr
    assert "Traceback" not in r.stderr
    r = vzpkg(tmp_path, "import", str(tmp_path / "nope.tar"), "--name", NAME)
    assert r.returncode != 0 and "no such file" in r.stderr and "Traceback" not in r.stderr


@pytest.fixture(scope="module")
def big_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp_path = tmp_path_factory.mktemp("big")
    tree = tmp_path / "big"
    (tree / "data").mkdir(parents=True)
    rnd = os.urandom(1 << 16)
    for i in range(400):
        (tree / "data" / f"f{i:04d}").write_bytes(rnd[i:] + rnd[:i] * 4)
    return tar_of(tree, tmp_path / "big.tar", "tar")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_interrupted_import_leaves_previous_cache(sig: signal.Signals, tree: Path,
                                                  big_source: Path, tmp_path: Path) -> None:
    cache = tmp_path / "caches"
    good = tar_of(tree, tmp_path / "good.tar", "tar")
    assert vzpkg(cache, "import", str(good), "--name", NAME).returncode == 0
    before = {p: p.read_bytes() for p in cache.iterdir() if p.is_file()}
    big = big_source
    # as a foreground command gets Ctrl-C, even when these tests run as a background
    # job (whose shell has set SIGINT to be ignored, which children inherit)
    p = subprocess.Popen([sys.executable, "-m", "vzpkg.cli.vzpkg", "--cache-dir", str(cache),
                          "import", str(big), "--name", NAME], cwd=ROOT,
                         stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert p.stderr is not None
    for line in p.stderr:
        if "unpacking" in line:
            p.send_signal(sig)
            break
    err = p.stderr.read()
    rc = p.wait(timeout=60)
    assert {q: q.read_bytes() for q in cache.iterdir() if q.is_file()} == before
    if sig != signal.SIGKILL:
        assert rc == 130 and "interrupted" in err and "Traceback" not in err, err
    else:
        # a killed run cannot clean up; the next writer does, and only stale leftovers go
        assert rc == -signal.SIGKILL
        CacheStore(cache).cleanup_stale()
    assert leftovers(cache) == sorted(p.name for p in before)


def test_bad_source_date_epoch(tree: Path, tmp_path: Path) -> None:
    src = tar_of(tree, tmp_path / "rootfs.tar", "tar")
    env = dict(os.environ, SOURCE_DATE_EPOCH="yesterday")
    r = subprocess.run([sys.executable, "-m", "vzpkg.cli.vzpkg", "--cache-dir",
                        str(tmp_path / "c"), "import", str(src), "--name", NAME],
                       capture_output=True, text=True, cwd=ROOT, env=env, check=False)
    assert r.returncode == 1 and "SOURCE_DATE_EPOCH='yesterday'" in r.stderr
    assert "Traceback" not in r.stderr and leftovers(tmp_path / "c") == []
