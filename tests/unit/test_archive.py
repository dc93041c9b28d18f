"""vzpkg.archive: reproducible pack, faithful round trip, scan, bad input."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.archive_helpers import (
    FUTURE,
    OLD,
    SOURCE_DATE,
    decompressed,
    entries,
    make_tree,
    tree_state,
    user_xattrs_supported,
)
from vzpkg.archive import pack, scan, tool_versions, unpack
from vzpkg.core.errors import ArchiveError
from vzpkg.core.types import Compression


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    root = make_tree(tmp_path / "tree")
    if user_xattrs_supported(tmp_path):
        os.setxattr(root / "usr/bin/tool", "user.b", b"2")
        os.setxattr(root / "usr/bin/tool", "user.a", b"\x00binary\xff")
        os.setxattr(root / "etc", "user.dir", b"d")
    return root


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_pack_result_describes_the_file(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.tar.zst"
    r = pack(tree, out, source_date=SOURCE_DATE)
    assert r.path == out
    assert r.sha256 == _sha(out)
    assert r.compressed_size == out.stat().st_size
    names = [e["name"] for e in entries(out)]
    assert r.file_count == len(names)
    files = [p for p in tree.rglob("*") if p.is_file() and not p.is_symlink()]
    unique = {(p.stat().st_ino): p.stat().st_size for p in files}
    assert r.unpacked_size == sum(unique.values())


def test_round_trip_keeps_what_users_rely_on(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.tar.zst"
    pack(tree, out, source_date=SOURCE_DATE)
    dest = tmp_path / "ve"
    res = unpack(out, dest)
    before, after = tree_state(tree), tree_state(dest)
    # mtimes are clamped to the source date, everything else identical
    big = b"usr/lib/big.bin"
    assert after[big][5] == SOURCE_DATE and before[big][5] == FUTURE
    strip = {k: v[:5] + v[6:] for k, v in before.items()}
    assert {k: v[:5] + v[6:] for k, v in after.items()} == strip
    assert all(v[5] == OLD for k, v in after.items() if k != big)
    # hard links are links again, setuid kept, dangling symlink kept as is
    assert os.stat(dest / "usr/bin/tool").st_ino == os.stat(dest / "usr/lib/tool-hardlink2").st_ino
    assert os.stat(dest / "usr/bin/su").st_mode & 0o4000
    assert os.readlink(dest / "etc/dangling") == "../nowhere/at/all"
    assert (os.stat(dest).st_mtime, oct(os.stat(dest).st_mode & 0o7777)) == (OLD, "0o755")
    assert res.file_count == len(entries(out))
    assert res == scan(out)


def test_same_tree_gives_identical_bytes(tmp_path: Path) -> None:
    """Two copies made in opposite orders (different inodes and readdir order),
    one packed under another umask and after its files were read (atimes)."""
    a = make_tree(tmp_path / "a", order="forward")
    b = make_tree(tmp_path / "b", order="reverse")
    pack(a, tmp_path / "a.tar.zst", source_date=SOURCE_DATE)
    for p in b.rglob("*"):
        if p.is_file() and not p.is_symlink():
            p.read_bytes()
    old = os.umask(0o077)
    try:
        pack(b, tmp_path / "b.tar.zst", source_date=SOURCE_DATE)
    finally:
        os.umask(old)
    assert _sha(tmp_path / "a.tar.zst") == _sha(tmp_path / "b.tar.zst")
    pack(a, tmp_path / "c.tar.zst", source_date=SOURCE_DATE + 1)
    assert _sha(tmp_path / "a.tar.zst") != _sha(tmp_path / "c.tar.zst")


def test_output_does_not_depend_on_locale_or_threads(tree: Path, tmp_path: Path) -> None:
    code = ("import sys; from pathlib import Path; from vzpkg.archive import pack; "
            "pack(Path(sys.argv[1]), Path(sys.argv[2]), "
            f"source_date={SOURCE_DATE}, threads=int(sys.argv[3]))")
    shas = set()
    for i, (loc, threads) in enumerate([("C.UTF-8", 1), ("C", 2), ("POSIX", 4)]):
        out = tmp_path / f"{i}.tar.zst"
        env = {**os.environ, "LC_ALL": loc, "LANG": loc}
        subprocess.run([sys.executable, "-c", code, str(tree), str(out), str(threads)],
                       check=True, env=env)
        shas.add(_sha(out))
    assert len(shas) == 1


def test_archive_layout_is_sorted_numeric_and_clamped(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.tar.zst"
    pack(tree, out, source_date=SOURCE_DATE)
    es = entries(out)
    names = [e["name"].rstrip("/") for e in es]
    assert names[0] == "."
    # depth-first, each directory's entries in byte order, a directory before its content
    assert names.index("./usr") < names.index("./usr/bin") < names.index("./usr/bin/su")
    assert names.index("./bin") < names.index("./etc") < names.index("./run-fifo")
    assert names.index("./usr/bin/tool") < names.index("./usr/bin/tool-hardlink")
    for e in es:
        assert e["uname"] in (None, "") and e["gname"] in (None, "")
        assert e["atime"] is None and e["ctime"] is None
        assert e["mtime"] <= SOURCE_DATE
    link = next(e for e in es if e["name"] == "./usr/bin/tool-hardlink")
    assert link["hardlink"] and link["link"] == "./usr/bin/tool" and link["size"] == 0
    stream = decompressed(out)
    assert b"atime=" not in stream and b"ctime=" not in stream
    assert "naïve café".encode() in stream and b"latin1-\xe9" in stream


@pytest.mark.parametrize(("compression", "magic"), [
    (Compression.ZSTD, b"\x28\xb5\x2f\xfd"), (Compression.XZ, b"\xfd7zXZ\x00"),
    (Compression.GZIP, b"\x1f\x8b")])
def test_each_compression_packs_reproducibly_and_unpacks(
        tree: Path, tmp_path: Path, compression: Compression, magic: bytes) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    pack(tree, a, source_date=SOURCE_DATE, compression=compression, threads=1)
    pack(tree, b, source_date=SOURCE_DATE, compression=compression, threads=3)
    assert a.read_bytes().startswith(magic)
    assert _sha(a) == _sha(b)
    if compression is Compression.GZIP:
        header = a.read_bytes()[:10]
        assert header[4:8] == b"\0\0\0\0"          # no timestamp
        assert not header[3] & 0x08               # no file name
    unpack(a, tmp_path / "ve")
    assert tree_state(tmp_path / "ve").keys() == tree_state(tree).keys()


def test_level_changes_output_and_bad_level_is_refused(tree: Path, tmp_path: Path) -> None:
    pack(tree, tmp_path / "1", source_date=SOURCE_DATE, level=1)
    pack(tree, tmp_path / "19", source_date=SOURCE_DATE, level=19)
    assert _sha(tmp_path / "1") != _sha(tmp_path / "19")
    with pytest.raises(ArchiveError, match="level 30 is out of range for zstd") as exc:
        pack(tree, tmp_path / "x", source_date=SOURCE_DATE, level=30)
    assert exc.value.hint and "1 to 22" in exc.value.hint
    assert not (tmp_path / "x").exists()


def test_pack_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="no such directory"):
        pack(tmp_path / "missing", tmp_path / "o", source_date=SOURCE_DATE)
    (tmp_path / "f").write_text("x")
    with pytest.raises(ArchiveError, match="not a directory"):
        pack(tmp_path / "f", tmp_path / "o", source_date=SOURCE_DATE)
    (tmp_path / "t").mkdir()
    with pytest.raises(ArchiveError, match="cannot create"):
        pack(tmp_path / "t", tmp_path / "no/such/dir/o", source_date=SOURCE_DATE)
    with pytest.raises(ArchiveError, match="source date"):
        pack(tmp_path / "t", tmp_path / "o", source_date=-5)
    with pytest.raises(ArchiveError, match="inside the tree"):
        pack(tmp_path / "t", tmp_path / "t/o.tar.zst", source_date=SOURCE_DATE)
    assert not (tmp_path / "o").exists() and not (tmp_path / "t/o.tar.zst").exists()


def test_progress_reports_bytes_up_to_the_total(tree: Path, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    r = pack(tree, tmp_path / "c", source_date=SOURCE_DATE,
             progress=lambda d, t: seen.append((d, t)))
    assert seen[0] == (0, r.unpacked_size) and seen[-1] == (r.unpacked_size, r.unpacked_size)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    useen: list[tuple[int, int]] = []
    unpack(tmp_path / "c", tmp_path / "ve", progress=lambda d, t: useen.append((d, t)))
    size = (tmp_path / "c").stat().st_size
    assert useen[-1] == (size, size)


def test_unpack_detects_compression_by_content(tree: Path, tmp_path: Path) -> None:
    for i, comp in enumerate(Compression):
        out = tmp_path / f"cache{i}.tar"          # misleading name on purpose
        pack(tree, out, source_date=SOURCE_DATE, compression=comp)
        unpack(out, tmp_path / f"ve{i}")
        assert (tmp_path / f"ve{i}/etc/hostname").read_text() == "ve\n"
    plain = tmp_path / "plain.tar.zst"
    plain.write_bytes(decompressed(tmp_path / "cache0.tar"))
    assert scan(plain) == scan(tmp_path / "cache0.tar")
    unpack(plain, tmp_path / "ve-plain")
    assert tree_state(tmp_path / "ve-plain") == tree_state(tmp_path / "ve0")


def test_unpack_into_existing_empty_dir_and_keeps_cwd(tree: Path, tmp_path: Path) -> None:
    pack(tree, tmp_path / "c", source_date=SOURCE_DATE)
    dest = tmp_path / "empty"
    dest.mkdir()
    cwd = os.getcwd()
    unpack(tmp_path / "c", dest)
    assert os.getcwd() == cwd
    assert (dest / "usr/bin/tool").exists()


def test_unpack_refuses_non_empty_or_non_directory_dest(tree: Path, tmp_path: Path) -> None:
    pack(tree, tmp_path / "c", source_date=SOURCE_DATE)
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep").write_text("mine")
    with pytest.raises(ArchiveError, match="not empty"):
        unpack(tmp_path / "c", full)
    assert [p.name for p in full.iterdir()] == ["keep"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArchiveError, match="not a directory"):
        unpack(tmp_path / "c", tmp_path / "file")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "missing"])
def test_damaged_archive_is_an_error_and_leaves_nothing(
        tree: Path, tmp_path: Path, damage: str) -> None:
    good = tmp_path / "c"
    pack(tree, good, source_date=SOURCE_DATE)
    bad = tmp_path / "bad"
    data = good.read_bytes()
    if damage == "truncated":
        bad.write_bytes(data[: len(data) * 2 // 3])
    elif damage == "garbage":
        bad.write_bytes(bytes(range(256)) * 64)
    elif damage == "empty":
        bad.write_bytes(b"")
    dest = tmp_path / "ve"
    with pytest.raises(ArchiveError) as exc:
        unpack(bad, dest)
    assert str(bad) in exc.value.message
    assert not dest.exists()
    with pytest.raises(ArchiveError):
        scan(bad)


def test_unpacked_tree_repacks_to_the_same_bytes(tree: Path, tmp_path: Path) -> None:
    pack(tree, tmp_path / "a", source_date=SOURCE_DATE)
    unpack(tmp_path / "a", tmp_path / "ve")
    pack(tmp_path / "ve", tmp_path / "b", source_date=SOURCE_DATE)
    assert _sha(tmp_path / "a") == _sha(tmp_path / "b")


def test_gnu_tar_reads_our_archives(tree: Path, tmp_path: Path) -> None:
    if not shutil.which("tar"):
        pytest.skip("GNU tar is not installed")
    pack(tree, tmp_path / "c.tar.zst", source_date=SOURCE_DATE)
    (tmp_path / "gnu").mkdir()
    r = subprocess.run(["tar", "-C", str(tmp_path / "gnu"), "--zstd", "--xattrs",
                        "--xattrs-include=*", "-xf", str(tmp_path / "c.tar.zst")],
                       check=True, capture_output=True, text=True)
    # no unknown pax keywords, except POSIX hdrcharset for the one non-UTF-8 name
    assert all("hdrcharset" in line for line in r.stderr.splitlines())
    big = "usr/lib/big.bin"
    assert (tmp_path / "gnu" / big).read_bytes() == (tree / big).read_bytes()
    if os.listxattr(tree / "usr/bin/tool"):
        assert os.getxattr(tmp_path / "gnu/usr/bin/tool", "user.a") == b"\x00binary\xff"


def test_tool_versions_names_libarchive_and_zstd() -> None:
    v = tool_versions()
    assert v.startswith("libarchive 3.") and "zstd" in v


def test_interrupted_pack_and_unpack_leave_nothing(tree: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C in the middle (here from the progress callback) cleans up too."""
    def stop(done: int, total: int) -> None:
        if done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pack(tree, tmp_path / "c", source_date=SOURCE_DATE, progress=stop)
    assert not (tmp_path / "c").exists()
    pack(tree, tmp_path / "c", source_date=SOURCE_DATE)
    monkeypatch.setattr("vzpkg.archive.unpacking._PROGRESS_EVERY", 4)
    with pytest.raises(KeyboardInterrupt):
        unpack(tmp_path / "c", tmp_path / "ve", progress=stop)
    assert not (tmp_path / "ve").exists()
    assert os.getcwd() != str(tmp_path / "ve")
