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
  image's first mount (:func:`diskimage.make_image`,
  :func:`diskimage.settle_image`), so create writes no data and waits for no disk.

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
grace period, the event helper (:func:`diskgrace.grace_tick`) fills the balloon with the
free space, so the soft limit holds until the VE is back under it.  The soft
inode limit is stored and shown only.

Why not project quota (vzquota's successor): see ``docs/QUOTA.md``: the kernel
needs CONFIG_QFMT_V2 (ext4) or CONFIG_XFS_QUOTA, which kernels built without
them (this project's CI kernel) lack, and the limits would then be silently
absent; an image works on any VZ_ROOT file system with loop devices.

This module holds the limits: :class:`DiskLimits` from CTID.conf, the values no
VE can have, :class:`QuotaError`.  The rest, one job a module:
:mod:`diskimage` (making the image: pristine images, the copy at the first
mount), :mod:`diskmount` (loop devices, mount, unmount), :mod:`diskballoon`,
:mod:`diskresize` (changing the limits, live and offline), :mod:`diskusage`
(what ``vzquota stat`` and ``vzlist`` show), :mod:`diskgrace` (the soft limit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vzpkg.core.errors import UsageError, VeError
from vzpkg.runtime.params import UNLIMITED as UNLIMITED
from vzpkg.runtime.params import ParamError, parse_barrier_limit

KEYS = ("DISKSPACE", "DISKINODES", "QUOTATIME", "QUOTAUGIDLIMIT")
MIN_SPACE_K = 16 * 1024           # 16 MiB (params.py's DISKSPACE minimum)


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

