"""diskmount.umount on real mounts (root; every mount is undone in a ``finally``):
a busy mount goes lazily once the wait is over, and a mount that cannot be
unmounted, plainly or lazily, is a QuotaError naming the path, never an OSError.

Not reproduced here: the old code's lazy unmount failing right after an EBUSY on
the same path.  Nothing between those two calls changes what the path reaches
except another process (another vzctl, the event helper) unmounting it in that
instant, a race no test can time; that case now counts as done (the mount is gone).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from vzpkg.runtime import diskmount, libc
from vzpkg.runtime.quota import QuotaError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")


@contextlib.contextmanager
def _tmpfs(*points: Path) -> Iterator[None]:
    """tmpfs on each of *points* in turn; all taken away afterwards, whatever is left."""
    try:
        for p in points:
            p.mkdir(exist_ok=True)
            libc.mount("vztest", str(p), "tmpfs", libc.MS_NODEV | libc.MS_NOSUID, "size=1m")
        yield
    finally:
        for p in reversed(points):
            for _ in range(4):          # (a shadowed one shows again once its cover goes)
                with contextlib.suppress(OSError):
                    libc.umount2(str(p), libc.MNT_DETACH)
        assert not any(diskmount.is_mounted(p) for p in points)


@contextlib.contextmanager
def _busy(point: Path) -> Iterator[None]:
    """A process whose working directory is in *point* (the mount is busy)."""
    proc = subprocess.Popen(["sleep", "60"], cwd=point)
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def test_a_busy_mount_goes_lazily_after_the_wait(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(diskmount, "RELEASE_WAIT", 0.2)
    point = tmp_path / "p"
    with _tmpfs(point), _busy(point):
        with pytest.raises(OSError):            # (it is busy indeed)
            libc.umount2(str(point), diskmount.UMOUNT_NOFOLLOW)
        diskmount.umount(point)
        assert not diskmount.is_mounted(point)


def test_a_mount_the_path_no_longer_reaches_is_a_clear_error(tmp_path: Path) -> None:
    """The table lists a mount on T/p, but a later mount on T hides it: T/p is
    a missing path now, so it cannot be unmounted."""
    cover, point = tmp_path / "t", tmp_path / "t" / "p"
    cover.mkdir()
    with _tmpfs(point, cover):
        assert diskmount.is_mounted(point) and not point.exists()
        with pytest.raises(QuotaError) as err:
            diskmount.umount(point)
        assert f"cannot unmount {point}: No such file or directory" in err.value.message


def test_a_lazy_unmount_that_fails_is_a_clear_error(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """T/p holds a hidden mount and, over T, a busy one: the busy one goes lazily,
    and the lazy unmount of what the table still lists at T/p fails."""
    monkeypatch.setattr(diskmount, "RELEASE_WAIT", 0.2)
    cover, point = tmp_path / "t", tmp_path / "t" / "p"
    cover.mkdir()
    with _tmpfs(point, cover, point), _busy(point):
        with pytest.raises(QuotaError) as err:
            diskmount.umount(point)
        assert f"cannot unmount {point} (even lazily): Invalid argument" in err.value.message
        assert diskmount.is_mounted(point)      # (the hidden one)
