"""Every kind of unsafe archive is refused by unpack and scan, names the entry,
writes nothing outside the destination and leaves nothing behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.archive_helpers import Member, craft, user_xattrs_supported
from vzpkg.archive import scan, unpack
from vzpkg.core.errors import ArchiveError, UnsafeArchiveError

# A few harmless entries first, so that refusing means cleaning up real files.
PRELUDE: list[Member] = [
    ("dir", "./", {}), ("dir", "./etc", {}), ("file", "./etc/hostname", {"data": b"ve\n"}),
    ("dir", "./usr", {}), ("dir", "./usr/bin", {}), ("file", "./usr/bin/tool", {}),
]

# kind -> (members after the prelude, the entry named in the error, words of the reason)
CASES: dict[str, tuple[list[Member], str, str]] = {
    "dotdot": ([("file", "../escaped", {})], "../escaped", "'..'"),
    "dotdot-inside": ([("file", "./usr/../../escaped", {})], "./usr/../../escaped", "'..'"),
    "absolute": ([("file", "{outside}/escaped", {})], "{outside}/escaped", "absolute"),
    "through-symlink-absolute": (
        [("symlink", "./evil", {"target": "{outside}"}), ("file", "./evil/escaped", {})],
        "./evil/escaped", "through the symlink 'evil'"),
    "through-symlink-dotdot": (
        [("symlink", "./up", {"target": ".."}), ("file", "./up/escaped", {})],
        "./up/escaped", "through the symlink 'up'"),
    "through-symlink-inside": (
        [("symlink", "./lnk", {"target": "usr"}), ("file", "./lnk/bin/x", {})],
        "./lnk/bin/x", "through the symlink 'lnk'"),
    "through-symlink-deep": (
        [("symlink", "./usr/bin/sub", {"target": "{outside}"}),
         ("dir", "./usr/bin/sub/dir", {})],
        "./usr/bin/sub/dir/", "through the symlink 'usr/bin/sub'"),
    "dir-over-symlink": (
        [("symlink", "./evil", {"target": "{outside}"}), ("dir", "./evil", {})],
        "./evil/", "replace an earlier symlink with a directory"),
    "symlink-over-dir": (
        [("symlink", "./usr/bin", {"target": "{outside}"})],
        "./usr/bin", "replace an earlier directory with a symlink"),
    "file-over-symlink": (
        [("symlink", "./etc/passwd", {"target": "{outside}/escaped"}),
         ("file", "./etc/passwd", {})],
        "./etc/passwd", "replace an earlier symlink with a file"),
    "parent-is-a-file": (
        [("file", "./etc/hostname/x", {})], "./etc/hostname/x", "not a directory"),
    "hardlink-dotdot": (
        [("hardlink", "./h", {"target": "../outside-file"})], "./h", "outside the tree"),
    "hardlink-absolute": (
        [("hardlink", "./h", {"target": "{outside}/secret"})], "./h", "outside the tree"),
    "hardlink-through-symlink": (
        [("symlink", "./evil", {"target": "{outside}"}),
         ("hardlink", "./h", {"target": "./evil/secret"})],
        "./h", "not an earlier entry"),
    "hardlink-to-symlink": (
        [("symlink", "./s", {"target": "{outside}/secret"}),
         ("hardlink", "./h", {"target": "./s"})],
        "./h", "hard link to the symlink"),
    "hardlink-to-directory": (
        [("hardlink", "./h", {"target": "./usr"})], "./h", "hard link to the directory"),
    "hardlink-to-later-entry": (
        [("hardlink", "./h", {"target": "./later"}), ("file", "./later", {})],
        "./h", "not an earlier entry"),
    "char-device-nonstandard": (
        [("chr", "./dev/mem", {"major": 1, "minor": 1})], "./dev/mem", "character device 1:1"),
    "char-device-disguised": (    # the name says null, the numbers say tty1
        [("chr", "./dev/null", {"major": 4, "minor": 1})], "./dev/null",
        "character device 4:1"),
    "overlay-xattr": (
        [("dir", "./usr/share", {"xattrs": {"trusted.overlay.redirect": "/etc"}})],
        "./usr/share/", "overlayfs attribute 'trusted.overlay.redirect'"),
    "block-device": (
        [("blk", "./dev/sda", {"major": 8, "minor": 0})], "./dev/sda", "block device"),
}


def _fill(members: list[Member], outside: Path) -> list[Member]:
    out: list[Member] = []
    for kind, name, opts in members:
        opts = {k: (v.replace("{outside}", str(outside)) if isinstance(v, str) else v)
                for k, v in opts.items()}
        out.append((kind, name.replace("{outside}", str(outside)), opts))
    return out


@pytest.fixture()
def outside(tmp_path: Path) -> Path:
    """A directory outside the destination that no archive may touch."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "secret").write_text("do not touch\n")
    return d


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): (p.read_bytes() if p.is_file() else b"")
            for p in sorted(d.rglob("*"))}


@pytest.mark.parametrize("kind", sorted(CASES))
@pytest.mark.parametrize("compress", [None, "zstd"])
def test_unsafe_archive_is_refused(tmp_path: Path, outside: Path, kind: str,
                                   compress: str | None) -> None:
    members, entry, reason = CASES[kind]
    arc = craft(tmp_path / "evil.tar", PRELUDE + _fill(members, outside), compress=compress)
    entry = entry.replace("{outside}", str(outside))
    before = _snapshot(outside)

    with pytest.raises(UnsafeArchiveError) as exc:
        scan(arc)
    assert exc.value.entry == entry and reason in exc.value.reason

    dest = tmp_path / "ve"
    with pytest.raises(UnsafeArchiveError) as exc:
        unpack(arc, dest)
    assert exc.value.entry == entry and reason in exc.value.reason
    assert entry in str(exc.value)
    assert not dest.exists(), "a refused archive must leave nothing behind"
    assert _snapshot(outside) == before
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "outside-file").exists()


def test_refused_archive_empties_a_dest_we_did_not_create(tmp_path: Path,
                                                          outside: Path) -> None:
    arc = craft(tmp_path / "evil.tar", PRELUDE + _fill(CASES["dotdot"][0], outside))
    dest = tmp_path / "ve"
    dest.mkdir(mode=0o711)
    with pytest.raises(UnsafeArchiveError):
        unpack(arc, dest)
    assert dest.is_dir() and list(dest.iterdir()) == []
    assert dest.stat().st_mode & 0o777 == 0o711


def test_read_only_directories_are_cleaned_up_too(tmp_path: Path, outside: Path) -> None:
    members: list[Member] = [("dir", "./ro", {"mode": 0o555}),
                             ("file", "./ro/f", {"mode": 0o444}),
                             ("dir", "./ro/sub", {"mode": 0o000}), ("file", "../bad", {})]
    arc = craft(tmp_path / "evil.tar", PRELUDE + members)
    with pytest.raises(UnsafeArchiveError):
        unpack(arc, tmp_path / "ve")
    assert not (tmp_path / "ve").exists()


def test_symlinks_may_point_anywhere(tmp_path: Path, outside: Path) -> None:
    """Absolute and '..' targets are fine as long as nothing goes through them."""
    members: list[Member] = [
        ("symlink", "./abs", {"target": str(outside)}),
        ("symlink", "./up", {"target": "../../.."}),
        ("symlink", "./usr/bin/sh", {"target": "/bin/dash"}),
        ("hardlink", "./usr/bin/tool2", {"target": "./usr/bin/tool"}),
        ("dir", "./etc", {"mode": 0o700}),                     # a directory again: fine
        ("file", "./etc/hostname", {"data": b"new\n"}),        # a file again: later wins
        ("fifo", "./run-fifo", {}),
    ]
    members.append(("file", "./usr/bin/ping", {"xattrs": {"user.note": "kept"}}))
    arc = craft(tmp_path / "ok.tar", PRELUDE + members)
    res = unpack(arc, tmp_path / "ve")
    ve = tmp_path / "ve"
    assert os.readlink(ve / "abs") == str(outside)
    assert os.readlink(ve / "usr/bin/sh") == "/bin/dash"
    assert (ve / "etc/hostname").read_text() == "new\n"
    assert (ve / "usr/bin/tool2").stat().st_ino == (ve / "usr/bin/tool").stat().st_ino
    if user_xattrs_supported(tmp_path):
        assert os.getxattr(ve / "usr/bin/ping", "user.note") == b"kept"
    assert res.file_count == len(PRELUDE) + len(members)
    assert res == scan(arc)


def test_standard_devices_pass_the_checks(tmp_path: Path) -> None:
    devs: list[Member] = [("chr", f"./dev/{n}", {"major": ma, "minor": mi}) for n, ma, mi in [
        ("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9),
        ("tty", 5, 0), ("console", 5, 1), ("ptmx", 5, 2)]]
    arc = craft(tmp_path / "dev.tar", [("dir", "./", {}), ("dir", "./dev", {}), *devs])
    assert scan(arc).file_count == 10


def test_libarchive_warnings_refuse_the_archive(tmp_path: Path) -> None:
    """A malformed pax header: libarchive flags it, we refuse the whole archive."""
    arc = craft(tmp_path / "ok.tar", [("file", "./" + "x" * 120, {})])  # long name -> pax
    raw = bytearray(arc.read_bytes())
    rec = raw.index(b" path=")
    raw[rec - 3:rec] = b"999"            # the record's length no longer matches
    arc.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError):
        scan(arc)
    with pytest.raises(ArchiveError):
        unpack(arc, tmp_path / "ve")
    assert not (tmp_path / "ve").exists()
