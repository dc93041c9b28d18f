"""Making a VE's disk image: mkfs once per size, inode count and layout tree (the
*pristine* image, ``PRIVATE/.vzquota-pristine/KEY.img``), and each VE's image a
sparse copy of it with a UUID, hash seed and label of its own, made at the
image's first mount (:func:`make_image`, :func:`settle_image`).  Also where the
image lives (:func:`image_path`) and how e2fsprogs are run (:func:`run`).
The design and its crash orderings: ``docs/QUOTA.md``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

from vzpkg.runtime import libc
from vzpkg.runtime.paths import VzPaths
from vzpkg.runtime.quota import UNLIMITED, DiskLimits, QuotaError

BLOCK = 4096
_CMD_TIMEOUT = 600


def image_path(paths: VzPaths, ctid: int) -> Path:
    p = paths.private(ctid)
    return p.with_name(p.name + ".img")


def has_image(paths: VzPaths, ctid: int) -> bool:
    return image_path(paths, ctid).is_file()


def run(argv: list[str], what: str, ok: tuple[int, ...] = (0,)) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=_CMD_TIMEOUT,
                           check=False)
    except FileNotFoundError:
        raise QuotaError(f"{what}: {argv[0]} is missing",
                         hint="install e2fsprogs (mkfs.ext4, resize2fs, e2fsck)") from None
    if r.returncode not in ok:
        raise QuotaError(f"{what}: {argv[0]} failed ({r.returncode}): "
                         f"{(r.stderr or r.stdout).strip()[-400:]}")
    return r.stdout


def mkfs_argv(label: str, limits: DiskLimits, tree: Path | None = None) -> list[str]:
    """mkfs.ext4's command line for a VE's image (the image's path last).

    What each option saves (bench/quota.py, docs/QUOTA.md):

    * ``-O ^resize_inode``: no blocks reserved for growing the group descriptor
      table (2 MB written, half of mkfs's time on a 4 GiB image).  Growing still
      works, online and offline: ext4 switches to meta_bg groups past the table.
    * ``-O metadata_csum_seed``: the checksums do not depend on the UUID, so a
      copy of a pristine image gets a UUID of its own by a superblock write;
    * discard (mkfs's default, so not ``nodiscard``): on a regular file mkfs
      punches the whole image, knows it reads as zeros, and marks the inode tables
      zeroed, so the kernel's lazyinit thread never writes them after mount;
    * ``lazy_journal_init``: the journal is not written with zeros, which it
      already is after that punch: no stale block can be replayed after a crash;
    * ``-d TREE``: the directories the layout needs are written by mkfs itself,
      so an overlay VE's image is never mounted at create.
    """
    argv = ["mkfs.ext4", "-q", "-F", "-b", str(BLOCK), "-m", "0", "-T", "default",
            "-O", "^resize_inode,metadata_csum_seed", "-E",
            "root_owner=0:0,lazy_itable_init=1,lazy_journal_init=1", "-L", label[:16]]
    if limits.inodes_hard < UNLIMITED:
        argv += ["-N", str(limits.inodes_hard)]
    if tree is not None:
        argv += ["-d", str(tree)]
    return argv


PRISTINE = ".vzquota-pristine"
PRISTINE_MAX_DATA = 64 << 20      # more than that in a pristine image: mkfs instead
SYNC_FILE_RANGE_ALL = 7           # WAIT_BEFORE | WRITE | WAIT_AFTER
UNSETTLED = "user.vzpkg.pristine"     # on an image never mounted: its pristine image
_KEY = re.compile(r"[0-9a-f]{32}")


Tree = Mapping[str, str | None]     # what mkfs -d writes: name -> link target (None: a directory)


def make_image(paths: VzPaths, ctid: int, limits: DiskLimits,
               tree: Tree | None = None) -> None:
    """Make the VE's ext4 image (sparse), sized to the hard limits, holding the
    top-level directories and symlinks *tree* names (mkfs -d).

    mkfs runs once per size, inode count and tree: the result is kept as a
    *pristine* image (``PRIVATE/.vzquota-pristine/KEY.img``) and each VE's image
    is a sparse copy of it (about 200 KB of metadata) with a UUID, hash seed and
    label of its own written into the superblock.  The copy waits for the image's
    first mount (:func:`settle_image`): here the image is a sparse file of its size
    whose xattr ``user.vzpkg.pristine`` names its pristine image, so a create
    writes no data and waits for no disk.  Where the file system has no user
    xattrs, the copy is made (and written out) now."""
    img = image_path(paths, ctid)
    size = limits.image_bytes() // BLOCK * BLOCK
    try:
        pristine = _pristine(paths, ctid, limits, size, tree)
        if pristine is not None and _defer(img, size, pristine):
            return
        if pristine is None or not _clone(pristine, img, f"ve{ctid}"):
            img.unlink(missing_ok=True)
            with _tree_dir(img.parent / PRISTINE, tree) as d:
                _mkfs(img, size, mkfs_argv(f"ve{ctid}", limits, d), ctid)
    except BaseException:
        img.unlink(missing_ok=True)
        raise


def _mkfs(img: Path, size: int, argv: list[str], ctid: int) -> None:
    fd = os.open(img, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    run([*argv, str(img)], f"making the disk image of VE {ctid}")


@contextlib.contextmanager
def _tree_dir(top: Path, tree: Tree | None) -> Iterator[Path | None]:
    """A temporary directory holding *tree* for mkfs -d (None without one)."""
    if tree is None:
        yield None
        return
    top.mkdir(mode=0o700, parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix="tree.", dir=top))
    try:
        d.chmod(0o755)
        for name, link in sorted(tree.items()):
            if link is None:
                (d / name).mkdir(0o755)
            else:
                (d / name).symlink_to(link)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _pristine(paths: VzPaths, ctid: int, limits: DiskLimits, size: int,
              tree: Tree | None) -> Path | None:
    """The pristine image for these mkfs arguments and *tree*, made (and written
    out) if missing; None where it cannot be copied sparsely (then each VE's
    image gets a mkfs of its own; ``KEY.nocopy`` remembers that)."""
    argv = mkfs_argv("", limits)
    listing = sorted(tree.items()) if tree is not None else None
    key = hashlib.sha256(json.dumps([argv, size, listing]).encode()).hexdigest()[:32]
    top = paths.private_base / PRISTINE
    out = top / f"{key}.img"
    if out.is_file():
        return out
    top.mkdir(mode=0o700, parents=True, exist_ok=True)
    nocopy = top / f"{key}.nocopy"
    if nocopy.exists():
        return None
    tmp = top / f"{key}.tmp{os.getpid()}"
    tmp.unlink(missing_ok=True)
    try:
        with _tree_dir(top, tree) as d:
            _mkfs(tmp, size, mkfs_argv("", limits, d), ctid)
        fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fsync(fd)            # durable before any VE's image names it
            copyable = _layout(fd) is not None
        finally:
            os.close(fd)
        if not copyable:
            nocopy.touch()
            tmp.unlink()
            return None
        os.rename(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def _defer(img: Path, size: int, pristine: Path) -> bool:
    """Make *img* a sparse file of *size* bytes marked as a copy of *pristine* still
    to be made (:func:`settle_image`).  The mark is set before the size, in the same
    journal order as the VE's CTID.conf written next: once CTID.conf is on disk,
    so are the image and its mark.  False, nothing made, without user xattrs."""
    fd = os.open(img, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        try:
            os.setxattr(fd, UNSETTLED, pristine.stem.encode())
        except OSError as exc:
            if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            os.unlink(img)
            return False
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    return True


def settle(paths: VzPaths, ctid: int) -> None:
    """Make the VE's image a file system now, if its copy still waits for its first
    mount (:func:`settle_image`): before the image leaves this host, say."""
    img = image_path(paths, ctid)
    if img.is_file():
        settle_image(img, ctid)


def settle_image(img: Path, ctid: int) -> None:
    """Before an image's first mount (or any other write to it), make the copy of
    its pristine image that :func:`make_image` deferred, and write it out.

    Until then the image holds nothing of the VE (it was never mounted), so
    whatever a crash left in it (holes, half a copy) is simply copied over:
    cut to nothing, copied again, ``fdatasync``.  Only then the mark goes, and an
    ``fsync`` puts that on disk before the mount writes a block: an image without
    the mark is never copied over again.  A no-op for an image without the mark."""
    try:
        key = os.getxattr(img, UNSETTLED, follow_symlinks=False).decode(errors="replace")
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return
        raise QuotaError(f"cannot read the disk image {img} of VE {ctid}: "
                         f"{exc.strerror}") from None
    pristine = img.parent / PRISTINE / f"{key}.img"
    hint = (f"the VE was never started, so nothing of it is lost: vzctl destroy {ctid} "
            "and create it again")
    if not _KEY.fullmatch(key) or not pristine.is_file():
        raise QuotaError(f"VE {ctid} has not had its first start, and the pristine image "
                         f"its disk image {img} is to be copied from ({pristine}) is "
                         "missing", hint=hint)
    try:
        sfd = os.open(pristine, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            dfd = os.open(img, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.ftruncate(dfd, 0)
                copied = _copy(sfd, dfd, f"ve{ctid}")
                if copied:
                    os.fdatasync(dfd)           # the file system first,
                    os.removexattr(dfd, UNSETTLED)
                    os.fsync(dfd)               # then the mark's removal, before the mount
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)
    except OSError as exc:              # (the mark stays: the next mount tries again)
        raise QuotaError(f"cannot make the disk image {img} of VE {ctid} from "
                         f"{pristine}: {exc.strerror}",
                         hint="see the message (is the host's file system full?)") from None
    if not copied:
        raise QuotaError(f"the pristine image {pristine} of VE {ctid}'s disk image "
                         "cannot be copied", hint=hint)


def _layout(sfd: int) -> tuple[bytearray, int, list[tuple[int, int]]] | None:
    """The primary superblock, size and data extents of the pristine image open
    as *sfd*; None if it is not one this module made (ext4 with metadata_csum and
    a checksum seed) or the file system cannot tell its data from its holes."""
    sb = bytearray(os.pread(sfd, 1024, 1024))
    if len(sb) < 1024:
        return None
    incompat, ro_compat = struct.unpack_from("<II", sb, 0x60)
    if (struct.unpack_from("<H", sb, 0x38)[0] != 0xEF53 or not incompat & 0x2000
            or not ro_compat & 0x400 or sb[0x175] != 1):
        return None                     # not ext4 with metadata_csum + csum_seed
    size = os.fstat(sfd).st_size
    extents, off = [], 0
    while off < size:
        try:
            off = os.lseek(sfd, off, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                break
            raise
        end = os.lseek(sfd, off, os.SEEK_HOLE)
        extents.append((off, end - off))
        off = end
    if sum(n for _, n in extents) > PRISTINE_MAX_DATA:
        return None                     # no SEEK_DATA here: it would copy it all
    return sb, size, extents


def _copy(sfd: int, dfd: int, label: str) -> bool:
    """Copy the pristine image open as *sfd* into the empty file open as *dfd*
    (only its data: it stays sparse), with a UUID, directory hash seed and label
    of its own in the superblock.  False, *dfd* untouched, if it cannot be
    copied (:func:`_layout`)."""
    found = _layout(sfd)
    if found is None:
        return False
    sb, size, extents = found
    os.ftruncate(dfd, size)
    for off, n in extents:
        pos = off
        while n > 0:
            k = os.copy_file_range(sfd, dfd, n, pos, pos)
            if k <= 0:
                raise OSError(errno.EIO, "short copy of a pristine disk image")
            n -= k
            pos += k
    sb[0x68:0x78] = uuid.uuid4().bytes                  # s_uuid
    sb[0x78:0x88] = label.encode()[:16].ljust(16, b"\0")   # s_volume_name
    sb[0xEC:0xFC] = uuid.uuid4().bytes                  # s_hash_seed
    struct.pack_into("<I", sb, 0x3FC, _crc32c(bytes(sb[:0x3FC])))
    os.pwrite(dfd, bytes(sb), 1024)
    return True


def _clone(src: Path, dst: Path, label: str) -> bool:
    """Copy the pristine image *src* to the new file *dst* now (:func:`_copy`) and
    write it out, so the caller's next fsync commits it, as CTID.conf's does (for
    file systems without user xattrs, where the copy cannot wait).  False, with
    *dst* left for the caller to remove, if *src* cannot be copied."""
    sfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        dfd = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                      | os.O_CLOEXEC, 0o600)
        try:
            if not _copy(sfd, dfd, label):
                return False
            libc.sync_file_range(dfd, 0, 0, SYNC_FILE_RANGE_ALL)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)
    return True


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def _crc32c(data: bytes, crc: int = 0xFFFFFFFF) -> int:
    """ext4's superblock checksum: CRC-32C from ~0, not inverted at the end."""
    t = _CRC32C
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc
