"""vzpkg.archive as root: owners, devices, privileged xattrs and file
capabilities survive pack -> unpack, and stay reproducible."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.archive_helpers import SOURCE_DATE, craft, make_tree, tree_state
from vzpkg.archive import STANDARD_DEVICES, pack, scan, unpack
from vzpkg.core.errors import UnsafeArchiveError

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    root = make_tree(tmp_path / "tree")
    (root / "dev").mkdir()
    for (major, minor), name in STANDARD_DEVICES.items():
        os.mknod(root / "dev" / name, 0o20666, os.makedev(major, minor))
    os.chown(root / "etc/shadow", 0, 42)
    os.chown(root / "var/log/.hidden", 1234, 5678)              # no such user: numeric
    os.chown(root / "bin", 4321, 8765, follow_symlinks=False)   # owner of a symlink
    os.chown(root / "usr/bin/su", 0, 0)
    os.chmod(root / "usr/bin/su", 0o4755)                       # chown clears setuid
    (root / "srv").mkdir()
    os.chown(root / "srv", 0, 50)
    os.chmod(root / "srv", 0o2775)
    os.setxattr(root / "usr/bin/tool", "trusted.vzpkg-test", b"t")
    os.setxattr(root / "etc", "security.vzpkg-test", b"label")
    if shutil.which("setcap"):
        subprocess.run(["setcap", "cap_net_raw=ep", str(root / "usr/bin/tool")], check=True)
    else:   # VFS_CAP_REVISION_2 with cap_net_raw (13) permitted + effective
        os.setxattr(root / "usr/bin/tool", "security.capability",
                    bytes.fromhex("0100000200200000000000000000000000000000"))
    return root


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_root_round_trip_keeps_owners_devices_xattrs_caps(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.tar.zst"
    pack(tree, out, source_date=SOURCE_DATE)
    ve = tmp_path / "ve"
    unpack(out, ve)
    before, after = tree_state(tree), tree_state(ve)
    assert {k: v[:5] + v[6:] for k, v in after.items()} == \
           {k: v[:5] + v[6:] for k, v in before.items()}
    assert os.stat(ve / "var/log/.hidden")[4:6] == (1234, 5678)
    assert os.lstat(ve / "bin")[4:6] == (4321, 8765)
    assert os.stat(ve / "usr/bin/su").st_mode & 0o4000
    assert os.stat(ve / "srv").st_mode & 0o2000
    assert os.getxattr(ve / "usr/bin/tool", "security.capability")
    assert os.getxattr(ve / "usr/bin/tool", "trusted.vzpkg-test") == b"t"
    assert os.major(os.stat(ve / "dev/urandom").st_rdev) == 1
    if shutil.which("getcap"):
        r = subprocess.run(["getcap", str(ve / "usr/bin/tool")], check=True,
                           capture_output=True, text=True)
        assert "cap_net_raw" in r.stdout


def test_root_tree_repacks_byte_identical(tree: Path, tmp_path: Path) -> None:
    pack(tree, tmp_path / "a", source_date=SOURCE_DATE)
    unpack(tmp_path / "a", tmp_path / "ve")
    pack(tmp_path / "ve", tmp_path / "b", source_date=SOURCE_DATE)
    assert _sha(tmp_path / "a") == _sha(tmp_path / "b")


def test_unsafe_device_is_never_created(tmp_path: Path) -> None:
    arc = craft(tmp_path / "evil.tar", [
        ("dir", "./", {}), ("dir", "./dev", {}),
        ("chr", "./dev/null", {"major": 1, "minor": 3}),
        ("blk", "./dev/vda", {"major": 253, "minor": 0})])
    with pytest.raises(UnsafeArchiveError, match="dev/vda"):
        unpack(arc, tmp_path / "ve")
    assert not (tmp_path / "ve").exists()


def test_pack_stays_on_one_filesystem(tree: Path, tmp_path: Path) -> None:
    """A leftover mount in a build tree is packed as an empty directory."""
    (tree / "proc").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "vzpkg-test", str(tree / "proc")], check=True)
    try:
        (tree / "proc/host-file").write_text("from the host\n")
        pack(tree, tmp_path / "c", source_date=SOURCE_DATE)
    finally:
        subprocess.run(["umount", str(tree / "proc")], check=True)
    unpack(tmp_path / "c", tmp_path / "ve")
    assert (tmp_path / "ve/proc").is_dir()
    assert list((tmp_path / "ve/proc").iterdir()) == []


@pytest.fixture()
def shared_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="vzpkg-archive-"))
    d.chmod(0o777)
    yield d
    shutil.rmtree(d)


def test_unprivileged_unpack_skips_owners_quietly(tree: Path, shared_dir: Path) -> None:
    """The same archive unpacks without root: contents and modes, not owners."""
    out = shared_dir / "c.tar.zst"
    # devices cannot be made without root; leave them out of this archive
    shutil.rmtree(tree / "dev")
    pack(tree, out, source_date=SOURCE_DATE)
    out.chmod(0o644)
    # drop to nobody in a forked child: this process's modules stay usable even when
    # the checkout and its venv are not readable by nobody
    r_fd, w_fd = os.pipe()
    pid = os.fork()
    if pid == 0:                                    # child
        status = 1
        try:
            os.close(r_fd)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            n = unpack(out, shared_dir / "ve").file_count
            os.write(w_fd, str(n).encode())
            status = 0
        except BaseException as exc:  # report to the parent
            os.write(w_fd, f"error: {exc!r}".encode())
        finally:
            os._exit(status)
    os.close(w_fd)
    with os.fdopen(r_fd) as f:
        said = f.read()
    _, wstatus = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wstatus) == 0, said
    assert int(said) == scan(out).file_count
    ve = shared_dir / "ve"
    assert (ve / "usr/lib/big.bin").read_bytes() == (tree / "usr/lib/big.bin").read_bytes()
    assert os.stat(ve / "var/log/.hidden").st_uid == 65534
