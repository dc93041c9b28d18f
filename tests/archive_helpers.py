"""Fixtures shared by the archive tests: sample trees, crafted tarballs, tree
comparison.  Crafted archives are written with Python's tarfile (a real tar
writer that does not sanitise names), so each unsafe kind is exactly what an
attacker could hand us."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import libarchive

SOURCE_DATE = 1_700_000_000          # 2023-11-14
OLD = 1_500_000_000                  # before SOURCE_DATE
FUTURE = 2_000_000_000               # after SOURCE_DATE


def user_xattrs_supported(path: Path) -> bool:
    probe = path / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.vzpkg", b"1")
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


def make_tree(root: Path, *, order: str = "forward") -> Path:
    """A small OS-like tree: nested dirs, empty and multi-MB files, relative,
    absolute and dangling symlinks, hard links, a fifo, a setuid file, odd names.
    ``order='reverse'`` creates the same tree in the opposite order (so that
    readdir order and inode numbers differ)."""
    root.mkdir()
    big = bytes(range(256)) * (3 * 4096 + 7)                  # ~3 MiB, not chunk-aligned
    files: list[tuple[str, bytes, int]] = [
        ("etc/hostname", b"ve\n", 0o644),
        ("etc/shadow", b"root:*:19000::::::\n", 0o640),
        ("usr/bin/tool", b"\x7fELF" + b"x" * 5000, 0o755),
        ("usr/bin/su", b"\x7fELF-su", 0o4755),
        ("usr/lib/big.bin", big, 0o644),
        ("usr/share/empty", b"", 0o644),
        ("usr/share/na\u00efve caf\u00e9.txt", b"utf-8 name\n", 0o644),
        ("var/log/.hidden", b"h", 0o600),
        ("usr/share/" + "long-directory-name/" * 6 + "x" * 120, b"pax path", 0o644),
    ]
    if order == "reverse":
        files.reverse()
    for name, data, mode in files:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        p.chmod(mode)
    raw = os.fsencode(root / "usr/share") + b"/latin1-\xe9.txt"    # not valid UTF-8
    with open(raw, "wb") as f:
        f.write(b"latin-1 name\n")
    (root / "tmp").mkdir(mode=0o755)
    (root / "tmp").chmod(0o1777)
    os.link(root / "usr/bin/tool", root / "usr/bin/tool-hardlink")
    os.link(root / "usr/bin/tool", root / "usr/lib/tool-hardlink2")
    (root / "bin").symlink_to("usr/bin")
    (root / "etc/localtime").symlink_to("/usr/share/zoneinfo/UTC")
    (root / "etc/dangling").symlink_to("../nowhere/at/all")
    os.mkfifo(root / "run-fifo")
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            os.utime(os.path.join(dirpath, n), (OLD, OLD), follow_symlinks=False)
    os.utime(root / "usr/lib/big.bin", (FUTURE, FUTURE))
    os.utime(root, (OLD, OLD))
    return root


def tree_state(root: Path) -> dict[bytes, tuple[object, ...]]:
    """What a user relies on, per path: type, mode, owner, size, content or link
    target, mtime, and which paths share an inode."""
    out: dict[bytes, tuple[object, ...]] = {}
    inodes: dict[tuple[int, int], bytes] = {}
    base = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(base):
        for n in sorted(dirnames + filenames):
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, base)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    body: object = f.read()
                if st.st_nlink > 1:
                    body = (body, inodes.setdefault((st.st_dev, st.st_ino), rel))
            elif stat.S_ISLNK(st.st_mode):
                body = os.readlink(p)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                body = (os.major(st.st_rdev), os.minor(st.st_rdev))
            else:
                body = None
            xattrs = tuple(sorted(
                (x, os.getxattr(p, x, follow_symlinks=False))
                for x in os.listxattr(p, follow_symlinks=False)))
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid,
                        st.st_gid, body, int(st.st_mtime), xattrs)
    return out


def entries(archive: Path) -> list[dict[str, Any]]:
    """Read every entry's header (as plain values) with libarchive-c."""
    out = []
    with libarchive.file_reader(str(archive)) as reader:
        for e in reader:
            out.append({"name": _text(e.pathname), "type": e.filetype, "mtime": e.mtime,
                        "atime": e.atime, "ctime": e.ctime, "uname": e.uname,
                        "gname": e.gname, "uid": e.uid, "gid": e.gid, "size": e.size,
                        "link": _text(e.linkpath), "hardlink": e.islnk, "perm": e.perm})
    return out


def _text(v: str | bytes | None) -> str | None:
    return v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else v


def decompressed(archive: Path) -> bytes:
    """The archive's tar stream, decompressed by the command-line tools."""
    magic = archive.read_bytes()[:6]
    tool = {b"\x28\xb5\x2f\xfd": ["zstd", "-dc"], b"\xfd7zXZ\x00": ["xz", "-dc"],
            b"\x1f\x8b": ["gzip", "-dc"]}
    for m, cmd in tool.items():
        if magic.startswith(m):
            return subprocess.run([*cmd, str(archive)], check=True,
                                  capture_output=True).stdout
    return archive.read_bytes()


# --- crafted archives -------------------------------------------------------

Member = tuple[str, str, dict[str, object]]      # (type, name, options)


def craft(path: Path, members: Iterable[Member], *, compress: str | None = None) -> Path:
    """Write a tar with the given members: ('file', name, {data}), ('dir', ...),
    ('symlink', name, {target}), ('hardlink', name, {target}),
    ('chr'|'blk', name, {major, minor}), ('fifo', name, {})."""
    kinds = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
             "hardlink": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE,
             "fifo": tarfile.FIFOTYPE}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, name, opts in members:
            info = tarfile.TarInfo(name)
            info.type = kinds[kind]
            info.mode = int(opts.get("mode", 0o755 if kind == "dir" else 0o644))  # type: ignore[call-overload]
            info.mtime = OLD
            xattrs = dict(opts.get("xattrs", {}))  # type: ignore[call-overload]
            info.pax_headers = {"SCHILY.xattr." + k: v for k, v in xattrs.items()}
            data = b""
            if kind == "file":
                data = bytes(opts.get("data", b"payload\n"))  # type: ignore[call-overload]
                info.size = len(data)
            elif kind in ("symlink", "hardlink"):
                info.linkname = str(opts["target"])
            elif kind in ("chr", "blk"):
                info.devmajor = int(opts["major"])  # type: ignore[call-overload]
                info.devminor = int(opts["minor"])  # type: ignore[call-overload]
            tar.addfile(info, io.BytesIO(data) if data else None)
    raw = buf.getvalue()
    if compress:
        cmd = {"zstd": ["zstd", "-q", "-c"], "xz": ["xz", "-c"], "gzip": ["gzip", "-c"]}
        raw = subprocess.run(cmd[compress], input=raw, check=True, capture_output=True).stdout
    path.write_bytes(raw)
    return path
