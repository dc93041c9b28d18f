"""The soft space limit and QUOTATIME: the event helper's look at a running VE
(:func:`grace_tick`), which lets the balloon take the free space once the VE has
been past its soft limit for longer than its grace period.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from vzpkg.runtime import diskballoon, diskmount
from vzpkg.runtime.diskimage import image_path
from vzpkg.runtime.paths import VzPaths
from vzpkg.runtime.quota import of_config

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
    if not img.is_file() or not diskmount.is_mounted(private):
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
        balloon = diskballoon.balloon_size(private)
        used = (st.f_blocks - st.f_bfree) * st.f_frsize - balloon
        normal = max(img.stat().st_size - lim.space_hard * 1024, 0)
        if used <= lim.space_soft * 1024:
            if not gfile.exists():
                return None
            gfile.unlink()
            if balloon > normal:
                diskballoon.set_balloon(private, normal)
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
                diskballoon.set_balloon(private, balloon + max(free - slack, 0))
                return (f"VE {ctid}: past its soft disk limit for over {lim.quotatime} s: "
                        "no more space until it is back under it")
        return None
    finally:
        os.close(lock)
