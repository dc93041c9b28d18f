"""What a VE's disk image holds against its size, as the VE's ``df`` sees it
(the balloon not counted): the numbers of ``vzquota stat`` and ``vzlist``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vzpkg.runtime import diskballoon, diskmount
from vzpkg.runtime.diskimage import image_path
from vzpkg.runtime.paths import VzPaths


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
    if diskmount.is_mounted(private):
        return _statfs(private)
    if not mount:
        return None
    diskmount.wait_released(img, ctid)
    diskmount.mount(img, private, ctid, readonly=True)
    try:
        return _statfs(private)
    finally:
        diskmount.umount(private)


def _statfs(private: Path) -> Usage:
    st = os.statvfs(private)
    balloon = diskballoon.balloon_size(private) // 1024
    used = (st.f_blocks - st.f_bfree) * st.f_frsize // 1024 - balloon
    return Usage(used, st.f_blocks * st.f_frsize // 1024 - balloon,
                 st.f_files - st.f_ffree, st.f_files)
