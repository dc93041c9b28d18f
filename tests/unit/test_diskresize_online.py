"""Growing a mounted disk image (diskresize._grow_online) when a step fails: the
user gets QuotaError saying nothing was changed, and the image file and its loop
device are as they were.  A real ext4 image on a real loop device (root; unmounted
in a ``finally``).

Not reproduced here: an undo step failing (the file's truncate back) while the
next (the loop device's capacity) must still run; nothing the test can do to the
file between the grow and its undo would fail only the second truncate.  The two
undo steps are now independent by construction."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from vzpkg.runtime import diskmount, diskresize, libc
from vzpkg.runtime.quota import QuotaError

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root"),
              pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="needs mkfs.ext4")]

M = 1 << 20
CAP_SYS_RESOURCE = 24


@contextlib.contextmanager
def _mounted_image(tmp_path: Path) -> Iterator[tuple[Path, Path, str]]:
    img, private = tmp_path / "ve.img", tmp_path / "private"
    with open(img, "wb") as f:
        f.truncate(32 * M)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", str(img)], check=True,
                   capture_output=True)
    diskmount.mount(img, private, 0)
    try:
        yield img, private, diskmount.loop_of(private)
    finally:
        subprocess.run(["chattr", "-i", str(img)], check=False, capture_output=True)
        try:
            diskmount.umount(private)
        finally:
            with contextlib.suppress(OSError):
                libc.umount2(str(private), libc.MNT_DETACH)


def _loop_bytes(dev: str) -> int:
    return int(Path(f"/sys/block/{Path(dev).name}/size").read_text()) * 512


@pytest.mark.skipif(shutil.which("chattr") is None, reason="needs chattr")
def test_an_image_file_that_cannot_grow_is_a_clear_error(tmp_path: Path) -> None:
    with _mounted_image(tmp_path) as (img, private, dev):
        if subprocess.run(["chattr", "+i", str(img)], check=False).returncode != 0:
            pytest.skip("no immutable flag where the tests run")
        with pytest.raises(QuotaError) as err:
            diskresize._grow_online(img, private, 7, 64 * M)
        assert ("cannot grow the disk image of running VE 7 past its size (32768K): "
                "Operation not permitted; nothing was changed") in err.value.message
        assert img.stat().st_size == 32 * M and _loop_bytes(dev) == 32 * M


def test_a_refused_file_system_resize_undoes_the_file_and_the_loop_device(
        tmp_path: Path) -> None:
    """Without CAP_SYS_RESOURCE the kernel refuses the ext4 resize, after the file
    and the loop device have grown: both go back."""
    with _mounted_image(tmp_path) as (img, private, dev):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:                    # (dropping a capability is for this child only)
            code = 1
            try:
                os.close(r)
                eff, perm, inh = libc.capget()
                libc.capset(eff & ~(1 << CAP_SYS_RESOURCE), perm, inh)
                try:
                    diskresize._grow_online(img, private, 7, 64 * M)
                except QuotaError as exc:
                    os.write(w, exc.message.encode())
                    code = 0
            finally:
                os._exit(code)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            message = f.read().decode()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert "vzctl lacks CAP_SYS_RESOURCE" in message
        assert "nothing was changed" in message
        assert img.stat().st_size == 32 * M and _loop_bytes(dev) == 32 * M
