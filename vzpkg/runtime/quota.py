"""Disk quota: a VE's files on an ext4 image of its own (ploop's successor).

A VE created with ``--diskspace`` keeps its private area on a sparse ext4 image,
``VE_PRIVATE.img`` (``VZ_ROOT/private/CTID.img``), loop-mounted on
``private/CTID`` whenever the VE's files are in use.  The file system's size is
the hard DISKSPACE limit and its inode count the hard DISKINODES limit, so:

* a write past the limit fails in the VE with ENOSPC, and nothing outside the
  image is touched;
* ``df`` and ``df -i`` in the VE show the image: its limits and usage;
* the layouts are unchanged: plain unpacks onto the image, overlay keeps its
  ``upper``/``work`` there;
* mkfs runs once per size, inode count and layout tree: each VE's image is a
  sparse copy of that *pristine* image with a UUID of its own, made at the
  image's first mount (:func:`make_image`, :func:`_settle`), so create writes
  no data and waits for no disk.

Live changes (``vzctl set --diskspace`` on a running VE):

* lowering fills a *balloon*, ``/.vzquota-balloon`` at the image's top, owned by
  the host and immutable (the VE's root cannot remove it: that needs
  CAP_LINUX_IMMUTABLE over the host), with the space taken away; ``df`` then
  counts the balloon as used.  At the next mount of the stopped VE the balloon
  goes and the image is shrunk (resize2fs), so ``df`` shows the limit again;
* raising empties the balloon first; beyond the image's size it grows the image
  online (EXT4_IOC_RESIZE_FS), which needs CAP_SYS_RESOURCE: a vzctl without it
  (some sandboxes) says so, and ``--save`` applies it at the next start.

The soft space limit and QUOTATIME: past the soft limit for longer than the
grace period, the event helper (:func:`grace_tick`) fills the balloon with the
free space, so the soft limit holds until the VE is back under it.  The soft
inode limit is stored and shown only.

Why not project quota (vzquota's successor): see ``docs/QUOTA.md``: the kernel
needs CONFIG_QFMT_V2 (ext4) or CONFIG_XFS_QUOTA, which kernels built without
them (this project's CI kernel) lack, and the limits would then be silently
absent; an image works on any VZ_ROOT file system with loop devices.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from vzpkg.core.errors import UsageError, VeError
from vzpkg.runtime import libc
from vzpkg.runtime.params import UNLIMITED as UNLIMITED
from vzpkg.runtime.params import ParamError, parse_barrier_limit
from vzpkg.runtime.paths import VzPaths

BALLOON = ".vzquota-balloon"
KEYS = ("DISKSPACE", "DISKINODES", "QUOTATIME", "QUOTAUGIDLIMIT")
MIN_SPACE_K = 16 * 1024           # 16 MiB (params.py's DISKSPACE minimum)
BLOCK = 4096
EXT4_IOC_RESIZE_FS = 0x40086610
LOOP_SET_CAPACITY = 0x4C07
LOOP_CONFIGURE = 0x4C0A
LOOP_CTL_GET_FREE = 0x4C82
LO_FLAGS_AUTOCLEAR = 4
LO_FLAGS_DIRECT_IO = 16
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_IMMUTABLE_FL = 0x10
_CMD_TIMEOUT = 600
RELEASE_WAIT = 10.0               # seconds a just-stopped VE's mounts may take to go


class QuotaError(VeError):
    """A disk limit cannot be made or changed; the text says why and what to do."""


@dataclass(frozen=True)
class DiskLimits:
    """DISKSPACE (KiB) and DISKINODES as soft:hard, QUOTATIME in seconds."""

    space_soft: int = UNLIMITED
    space_hard: int = UNLIMITED
    inodes_soft: int = UNLIMITED
    inodes_hard: int = UNLIMITED
    quotatime: int = 0

    @property
    def limited(self) -> bool:
        return self.space_hard < UNLIMITED or self.inodes_hard < UNLIMITED

    @classmethod
    def of(cls, get: dict[str, str]) -> DiskLimits:
        """From CTID.conf values (already normalized by the parameter table)."""
        ss, sh = _pair(get.get("DISKSPACE"), kblocks=True)
        i_s, ih = _pair(get.get("DISKINODES"))
        qt = get.get("QUOTATIME") or "0"
        return cls(ss, sh, i_s, ih, int(qt) if qt.isdigit() else 0)

    def image_bytes(self) -> int:
        """The image's size: the hard space limit (inodes alone: 16 KiB each)."""
        if self.space_hard < UNLIMITED:
            return self.space_hard * 1024
        return max(self.inodes_hard * 16384, MIN_SPACE_K * 1024)


def _pair(text: str | None, kblocks: bool = False) -> tuple[int, int]:
    if not text:
        return UNLIMITED, UNLIMITED
    try:
        return parse_barrier_limit(text, kblocks=kblocks)
    except ParamError:
        return UNLIMITED, UNLIMITED


def check_values(values: dict[str, str]) -> None:
    """Refuse what no VE can have: second-level quota (UsageError says why)."""
    if values.get("QUOTAUGIDLIMIT", "0") not in ("0", ""):
        raise UsageError(
            "QUOTAUGIDLIMIT: second-level quota (quota/setquota for users and groups "
            "inside a VE) is not available: the kernel lets only a holder of "
            "CAP_SYS_ADMIN in the file system's own user namespace set quotas "
            "(quotactl), and a VE's disk is mounted by the host, so the VE's root "
            "gets EPERM; kernels without CONFIG_QFMT_V2 (this project's CI kernel) "
            "have no ext4 quota at all. "
            "Use QUOTAUGIDLIMIT=0", hint="the VE's own disk limit is the first level: "
            "--diskspace, --diskinodes (docs/QUOTA.md)")


def of_config(get: Callable[[str], str | None]) -> DiskLimits:
    return DiskLimits.of({k: v for k in KEYS if (v := get(k)) is not None})


# -- paths ------------------------------------------------------------------------

def image_path(paths: VzPaths, ctid: int) -> Path:
    p = paths.private(ctid)
    return p.with_name(p.name + ".img")


def has_image(paths: VzPaths, ctid: int) -> bool:
    return image_path(paths, ctid).is_file()


def _is_mounted(path: Path) -> bool:
    target = os.fsencode(str(path))
    with open("/proc/self/mountinfo", "rb") as f:
        return any(line.split(b" ", 5)[4].replace(b"\\040", b" ") == target for line in f)


def _run(argv: list[str], what: str, ok: tuple[int, ...] = (0,)) -> str:
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


# -- making, mounting, removing -----------------------------------------------------

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
    first mount (:func:`_settle`): here the image is a sparse file of its size
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
    _run([*argv, str(img)], f"making the disk image of VE {ctid}")


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
    to be made (:func:`_settle`).  The mark is set before the size, in the same
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
    mount (:func:`_settle`): before the image leaves this host, say."""
    img = image_path(paths, ctid)
    if img.is_file():
        _settle(img, ctid)


def _settle(img: Path, ctid: int) -> None:
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


def attach(paths: VzPaths, ctid: int) -> None:
    """Mount the VE's image on its private area (a no-op without an image or when
    mounted)."""
    img, private = image_path(paths, ctid), paths.private(ctid)
    if img.is_file() and not _is_mounted(private):
        _mount(img, private, ctid)


def reconcile(paths: VzPaths, ctid: int, limits: DiskLimits) -> None:
    """Make a stopped VE's image what *limits* says, and mount it: a balloon left
    by a live lowering is let out and the image shrunk (resize2fs), an image
    smaller than the limit (a raise saved while the VE ran) grown.  QuotaError,
    with the image as it was, when its files do not fit."""
    img, private = image_path(paths, ctid), paths.private(ctid)
    if not img.is_file() or limits.space_hard >= UNLIMITED:
        return
    if _is_mounted(paths.ve_root(ctid)):
        raise QuotaError(f"VE {ctid} is mounted ({paths.ve_root(ctid)}), so its disk "
                         "image cannot be resized now; nothing was changed",
                         hint=f"vzctl umount {ctid} first")
    _umount(private)                    # (left by an earlier command)
    target = limits.space_hard * 1024 // BLOCK * BLOCK
    _wait_released(img, ctid)
    _mount(img, private, ctid)
    try:
        if _balloon_size(private) == 0 and img.stat().st_size == target:
            return
        _drop_balloon(private)
        _umount(private)
        _wait_released(img, ctid)
        if target > img.stat().st_size:
            os.truncate(img, target)
        _resize_offline(img, ctid, target)
        _mount(img, private, ctid)
    except BaseException:
        with contextlib.suppress(QuotaError):
            _umount(private)
        raise


def detach(paths: VzPaths, ctid: int) -> None:
    """Unmount the VE's image (its loop device goes with the mount)."""
    private = paths.private(ctid)
    if image_path(paths, ctid).is_file():
        _umount(private)


def remove(paths: VzPaths, ctid: int) -> None:
    detach(paths, ctid)
    image_path(paths, ctid).unlink(missing_ok=True)


def _mount(img: Path, private: Path, ctid: int, *, readonly: bool = False) -> None:
    """Mount *img* on *private* (nodev) through a loop device of its own, which
    goes with the mount (autoclear); at its first mount, the image is made
    (:func:`_settle`)."""
    _settle(img, ctid)
    private.mkdir(mode=0o755, exist_ok=True)
    fd, dev = _loop_attach(img, ctid)
    try:
        libc.mount(dev, str(private), "ext4",
                   libc.MS_NODEV | (libc.MS_RDONLY if readonly else 0),
                   "noload" if readonly else None)
    except OSError as exc:
        raise QuotaError(f"cannot mount the disk image {img} of VE {ctid}: {exc.strerror}",
                         hint=f"check it: e2fsck -f {img}") from None
    finally:
        os.close(fd)                    # (a loop device nobody mounted goes now)


def _loop_attach(img: Path, ctid: int) -> tuple[int, str]:
    """A free loop device set to *img* with direct I/O (the image's pages are not
    cached twice: writes in the VE run at the host file system's speed), sectors of
    the file system's block size (every request is aligned for direct I/O) and
    autoclear: (its open descriptor, its path)."""
    backing = os.open(img, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        try:
            for _ in range(64):
                n = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
                dev = f"/dev/loop{n}"
                if not os.path.exists(dev):         # a host without udev
                    with contextlib.suppress(FileExistsError):
                        os.mknod(dev, 0o660 | stat.S_IFBLK, os.makedev(7, n))
                fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
                for flags, bsize in ((LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO, BLOCK),
                                     (LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO, 0),
                                     (LO_FLAGS_AUTOCLEAR, 0)):
                    info = bytearray(232)           # struct loop_info64
                    struct.pack_into("I", info, 52, flags)
                    name = os.fsencode(str(img))[:63]
                    info[56:56 + len(name)] = name
                    try:
                        fcntl.ioctl(fd, LOOP_CONFIGURE,
                                    struct.pack("II", backing, bsize) + bytes(info)
                                    + bytes(64))
                        return fd, dev
                    except OSError as exc:
                        if exc.errno != errno.EINVAL:   # EINVAL: not that here
                            os.close(fd)
                            if exc.errno == errno.EBUSY:
                                break               # taken meanwhile: the next one
                            raise QuotaError(f"cannot set up a loop device for the disk "
                                             f"image of VE {ctid}: {exc.strerror}") from None
                else:
                    os.close(fd)
                    raise QuotaError(f"cannot set up a loop device for the disk image of "
                                     f"VE {ctid}")
        finally:
            os.close(ctl)
    finally:
        os.close(backing)
    raise QuotaError(f"no free loop device for the disk image of VE {ctid}",
                     hint="see losetup -a; modprobe loop max_loop=N")


def _umount(private: Path) -> None:
    """Unmount the image.  A VE's mount namespace lets go of it a moment after its
    last process ends, so EBUSY is retried for a while before a lazy unmount (the
    offline work waits for the loop device to go: :func:`_wait_released`)."""
    deadline = time.monotonic() + RELEASE_WAIT
    while _is_mounted(private):
        try:
            libc.umount2(str(private), 8)                   # UMOUNT_NOFOLLOW
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise QuotaError(f"cannot unmount {private}: {exc.strerror}") from None
            if time.monotonic() < deadline:
                time.sleep(0.02)
                continue
            libc.umount2(str(private), libc.MNT_DETACH | 8)


def _loops_of(img: Path) -> list[str]:
    """The loop devices backed by *img* (sysfs)."""
    want = str(img.resolve())
    out = []
    for bf in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            if bf.read_text().strip() == want:
                out.append(bf.parent.parent.name)
    return out


def _wait_released(img: Path, ctid: int) -> None:
    """Wait until no loop device holds *img* (the kernel still writes to a file
    system unmounted lazily): offline work on it before that would be lost."""
    deadline = time.monotonic() + RELEASE_WAIT
    while _loops_of(img):
        if time.monotonic() > deadline:
            raise QuotaError(f"the disk image of VE {ctid} is still in use "
                             f"({', '.join(_loops_of(img))}); nothing was changed",
                             hint="a process may still hold a file of the VE; try "
                                  "again, or see losetup -a and fuser -m")
        time.sleep(0.05)


def _resize_offline(img: Path, ctid: int, size: int) -> None:
    """resize2fs the unmounted image to *size*; when its files do not fit, the
    image is left as it was (resize2fs refuses before it moves a block)."""
    _settle(img, ctid)                  # (made at its first mount: done already)
    blocks = size // BLOCK
    old = img.stat().st_size
    _run(["e2fsck", "-f", "-p", str(img)], f"checking the disk image of VE {ctid}",
         ok=(0, 1))                     # 1: errors corrected
    try:
        _run(["resize2fs", str(img), str(blocks)], f"resizing the disk image of VE {ctid}")
    except QuotaError as exc:
        if old < size:
            os.truncate(img, old)
        raise QuotaError(f"{exc.message}; nothing was changed",
                         hint="the VE's files need more than that: free space inside "
                              "it first, or give a higher limit") from None
    if img.stat().st_size > blocks * BLOCK:
        os.truncate(img, blocks * BLOCK)


# -- the balloon ----------------------------------------------------------------------

def _open_top(private: Path) -> int:
    return os.open(private, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def _open_balloon(top: int, create: bool) -> int | None:
    """The balloon, opened read-only without following links; None if there is
    none.  A balloon is a regular file of the host's root with one link: anything
    else of that name was planted by the VE and is an error, never written
    through.  (:func:`_writable` reopens it for writing once it is mutable.)"""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        if create:
            fd = os.open(BALLOON, flags | os.O_CREAT | os.O_EXCL, 0, dir_fd=top)
            _set_immutable(fd, True)
            return fd
        fd = os.open(BALLOON, flags, dir_fd=top)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise QuotaError(f"the balloon /{BALLOON} in the VE is not vzctl's "
                         f"({exc.strerror})", hint=f"remove /{BALLOON} inside the VE "
                         "and try again") from None
    st = os.fstat(fd)
    # immutable: only the host can set that flag, so the VE did not make this file
    if not (st.st_mode & 0o170000 == 0o100000 and st.st_uid == 0 and st.st_nlink == 1
            and _flags(fd) & FS_IMMUTABLE_FL):
        os.close(fd)
        raise QuotaError(f"/{BALLOON} in the VE is not vzctl's balloon",
                         hint=f"remove /{BALLOON} inside the VE and try again")
    return fd


def _flags(fd: int) -> int:
    return int(struct.unpack("l", fcntl.ioctl(fd, FS_IOC_GETFLAGS, struct.pack("l", 0)))[0])


def _writable(fd: int) -> int:
    """A writable descriptor of the very file open as *fd* (no path lookup)."""
    return os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_CLOEXEC)


def _set_immutable(fd: int, on: bool) -> None:
    flags = _flags(fd)
    flags = flags | FS_IMMUTABLE_FL if on else flags & ~FS_IMMUTABLE_FL
    fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("l", flags))


def _balloon_size(private: Path) -> int:
    top = _open_top(private)
    try:
        fd = _open_balloon(top, create=False)
        if fd is None:
            return 0
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)
    finally:
        os.close(top)


def _drop_balloon(private: Path) -> None:
    top = _open_top(private)
    try:
        fd = _open_balloon(top, create=False)
        if fd is not None:
            try:
                _set_immutable(fd, False)
            finally:
                os.close(fd)
            os.unlink(BALLOON, dir_fd=top)
    finally:
        os.close(top)


def _set_balloon(private: Path, size: int) -> None:
    """Make the balloon *size* bytes: its blocks are allocated (fallocate), so
    the VE cannot write them; ENOSPC, and the balloon as it was, when the VE
    already uses them."""
    top = _open_top(private)
    try:
        fd = _open_balloon(top, create=False)
        if fd is None:
            if size == 0:
                return
            fd = _open_balloon(top, create=True)
            assert fd is not None
        try:
            old = os.fstat(fd).st_size
            _set_immutable(fd, False)
            try:
                w = _writable(fd)
                try:
                    if size > old:
                        try:
                            os.posix_fallocate(w, 0, size)
                        except OSError:
                            os.ftruncate(w, old)
                            raise
                    else:
                        os.ftruncate(w, size)
                finally:
                    os.close(w)
            finally:
                _set_immutable(fd, True)
            now = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if now == 0:
            _drop_balloon(private)
    finally:
        os.close(top)


# -- changing limits ------------------------------------------------------------------

def resize(paths: VzPaths, ctid: int, old: DiskLimits, new: DiskLimits,
           running: bool) -> list[str]:
    """Apply *new* to VE *ctid*'s image (which exists), live on a running VE, else
    offline; QuotaError and nothing changed when it cannot be done."""
    notes: list[str] = []
    img, private = image_path(paths, ctid), paths.private(ctid)
    if new.inodes_hard != old.inodes_hard:
        raise QuotaError(
            f"VE {ctid}: DISKINODES of a disk image is set when it is made (mkfs) and "
            "grows with --diskspace; it cannot be changed on its own",
            hint="leave --diskinodes out, or re-create the VE with the inode limit")
    if new.space_hard != old.space_hard:
        if new.space_hard >= UNLIMITED:
            raise QuotaError(f"VE {ctid} lives on a disk image; its DISKSPACE cannot be "
                             "unlimited", hint="give a limit (e.g. --diskspace 100G)")
        target = new.space_hard * 1024 // BLOCK * BLOCK
        if running:
            size = img.stat().st_size
            if target > size:
                _grow_online(img, private, ctid, target)
                size = target
            _set_balloon_checked(private, ctid, size - target)
            notes.append(f"disk limit of running VE {ctid} is now {new.space_hard}K")
        else:
            reconcile(paths, ctid, new)
            detach(paths, ctid)
            notes.append(f"disk image of VE {ctid} resized to {new.space_hard}K")
    if new.inodes_soft < new.inodes_hard:
        notes.append(soft_warning())
    return notes


def soft_warning() -> str:
    return ("warning: the soft inode limit is stored and shown but not enforced: the "
            "disk image's inode count is the hard limit (docs/QUOTA.md)")


def _set_balloon_checked(private: Path, ctid: int, size: int) -> None:
    try:
        _set_balloon(private, size)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise QuotaError(f"VE {ctid} uses more disk space than the new limit; "
                             "nothing was changed",
                             hint="free space inside the VE first, or give a higher "
                                  "limit (vzquota stat CTID shows the usage)") from None
        raise QuotaError(f"cannot change the disk limit of VE {ctid}: {exc.strerror}") \
            from None


def _grow_online(img: Path, private: Path, ctid: int, size: int) -> None:
    old = img.stat().st_size
    dev = _loop_of(private)
    os.truncate(img, size)
    try:
        with open(dev, "rb") as f:
            fcntl.ioctl(f.fileno(), LOOP_SET_CAPACITY, 0)
        top = _open_top(private)
        try:
            fcntl.ioctl(top, EXT4_IOC_RESIZE_FS, struct.pack("Q", size // BLOCK))
        finally:
            os.close(top)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.truncate(img, old)
            with open(dev, "rb") as f:
                fcntl.ioctl(f.fileno(), LOOP_SET_CAPACITY, 0)
        why = ("vzctl lacks CAP_SYS_RESOURCE, which the kernel asks for to grow a "
               "mounted ext4" if exc.errno == errno.EPERM else exc.strerror)
        raise QuotaError(f"cannot grow the disk image of running VE {ctid} past its "
                         f"size ({old >> 10}K): {why}; nothing was changed",
                         hint="stop the VE and set it then, or add --save and the new "
                              "limit applies at the next start") from None


def _loop_of(private: Path) -> str:
    target = os.fsencode(str(private))
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split(b" ")
            if fields[4].replace(b"\\040", b" ") == target:
                src = fields[fields.index(b"-") + 2].decode()
                if re.fullmatch(r"/dev/loop\d+", src):
                    return src
    raise QuotaError(f"{private} is not a mounted disk image")


# -- usage ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Usage:
    """What a VE's image holds, in KiB and inodes (the balloon not counted)."""

    space_used: int
    space_size: int
    inodes_used: int
    inodes_size: int


def usage(paths: VzPaths, ctid: int, *, mount: bool = True) -> Usage | None:
    """The image's usage as the VE's df sees it; None without an image (or, without
    *mount*, when it is not mounted).  With *mount*, a stopped VE's image is
    mounted read-only for a moment (the caller holds the VE's lock)."""
    img, private = image_path(paths, ctid), paths.private(ctid)
    if not img.is_file():
        return None
    if _is_mounted(private):
        return _statfs(private)
    if not mount:
        return None
    _wait_released(img, ctid)
    _mount(img, private, ctid, readonly=True)
    try:
        return _statfs(private)
    finally:
        _umount(private)


def _statfs(private: Path) -> Usage:
    st = os.statvfs(private)
    balloon = _balloon_size(private) // 1024
    used = (st.f_blocks - st.f_bfree) * st.f_frsize // 1024 - balloon
    return Usage(used, st.f_blocks * st.f_frsize // 1024 - balloon,
                 st.f_files - st.f_ffree, st.f_files)


# -- the soft limit and its grace period ------------------------------------------------

GRACE_SLACK = 1 << 20     # what a VE past its grace may still write before the next look


def grace_file(paths: VzPaths, ctid: int) -> Path:
    """When VE *ctid* went past its soft space limit (seconds since the epoch)."""
    return paths.run_dir / f"{ctid}.grace"


def grace_tick(paths: VzPaths, ctid: int, now: float) -> str | None:
    """One look at a running VE's soft space limit (the event helper's loop calls it
    about every second).  Past the soft limit for longer than QUOTATIME, the soft
    limit acts as the hard one: the balloon takes the free space, so the VE can
    write no more (about GRACE_SLACK) until it is back under the soft limit; then
    the balloon gives the space back and the grace period starts afresh.  Returns
    a line for the helper's log when something changed.  Skips a VE whose lock is
    held (a vzctl working on it)."""
    from vzpkg.runtime.config import VeConfig
    img, private = image_path(paths, ctid), paths.private(ctid)
    if not img.is_file() or not _is_mounted(private):
        return None
    cfg = VeConfig.load(paths.conf(ctid))
    live = paths.livefile(ctid)
    if live.is_file():
        cfg = cfg.with_values(VeConfig.load(live).items())
    lim = of_config(cfg.get)
    gfile = grace_file(paths, ctid)
    if lim.space_soft >= lim.space_hard:
        gfile.unlink(missing_ok=True)
        return None
    lock = os.open(paths.lockfile(ctid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        st = os.statvfs(private)
        balloon = _balloon_size(private)
        used = (st.f_blocks - st.f_bfree) * st.f_frsize - balloon
        normal = max(img.stat().st_size - lim.space_hard * 1024, 0)
        if used <= lim.space_soft * 1024:
            if not gfile.exists():
                return None
            gfile.unlink()
            if balloon > normal:
                _set_balloon(private, normal)
            return f"VE {ctid}: back under its soft disk limit; the hard limit applies again"
        try:
            since = float(gfile.read_text())
        except (OSError, ValueError):
            gfile.write_text(f"{now:.0f}\n")
            return (f"VE {ctid}: past its soft disk limit ({lim.space_soft}K); "
                    f"grace period {lim.quotatime} s")
        free = st.f_bavail * st.f_frsize
        if now - since < lim.quotatime or free <= GRACE_SLACK:
            return None
        for slack in (GRACE_SLACK, 4 * GRACE_SLACK, 16 * GRACE_SLACK):
            with contextlib.suppress(OSError):
                _set_balloon(private, balloon + max(free - slack, 0))
                return (f"VE {ctid}: past its soft disk limit for over {lim.quotatime} s: "
                        "no more space until it is back under it")
        return None
    finally:
        os.close(lock)
