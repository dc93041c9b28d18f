"""The guard of a lazy restore (runtime/lazyguard.py), with a stand-in for CRIU's
lazy-pages daemon: it runs what it is told with the descriptors it is handed,
reports the daemon's end, and stands down when vzctl says so.  (What it does when
the daemon ends early, killing the VE, is in
tests/integration/test_vzmigrate.py.)"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from vzpkg.runtime import lazy, lazyguard

# the daemon's stand-in: "ready" on the status descriptor, a line from the page
# socket, then exit with the status it was given
DAEMON = """
import os, sys
pages, status, code = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
os.write(status, b"\\0"); os.close(status)
line = b""
while not line.endswith(b"\\n"):
    chunk = os.read(pages, 1)
    if not chunk:
        break
    line += chunk
os.write(pages, line.upper())
sys.exit(code)
"""


def _started(tmp_path: Path, code: int) -> tuple[lazyguard.Guard, socket.socket]:
    guard = lazyguard.Guard(tmp_path / "vz", 4242, tmp_path / "guard.log")
    ours, theirs = socket.socketpair()
    st_r, st_w = os.pipe()
    guard.start([sys.executable, "-c", DAEMON],
                ["{pages}", "{status}", str(code)], theirs, st_w)
    os.close(st_w)
    theirs.close()
    assert lazy.read_status(st_r)           # the daemon said it is ready
    return guard, ours


def test_the_daemon_runs_under_the_guard_with_the_descriptors_it_was_handed(
        tmp_path: Path) -> None:
    guard, pages = _started(tmp_path, 0)
    guard.arm()
    pages.sendall(b"page\n")
    assert pages.recv(16) == b"PAGE\n"      # the stream reaches the daemon and back
    assert guard.wait(60) == lazyguard.COMPLETE
    assert "complete: every page arrived" in (tmp_path / "guard.log").read_text()


def test_a_guard_told_to_stand_down_ends_the_daemon_and_touches_nothing(
        tmp_path: Path) -> None:
    guard, pages = _started(tmp_path, 1)
    guard.stand_down()                      # the daemon waits for a line: killed
    assert guard.poll() == lazyguard.STOOD_DOWN
    assert "stood down" in (tmp_path / "guard.log").read_text()
    assert not (tmp_path / "vz").exists()   # no VE was looked for, nothing made
    pages.close()


def test_a_guard_whose_vzctl_goes_before_the_start_ends(tmp_path: Path) -> None:
    guard = lazyguard.Guard(tmp_path / "vz", 4242, tmp_path / "guard.log")
    guard.ctl.close()
    assert guard.proc.wait(60) == lazyguard.STOOD_DOWN
