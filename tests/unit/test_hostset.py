"""Host settings changed for a while are given back by the last user, and by the
next vzctl when their users were killed (runtime/hostset.py).  A plain file stands
in for the sysctl; the users are real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from vzpkg.runtime import hostset

HOLDER = """
import sys, time
from pathlib import Path
from vzpkg.runtime import hostset
hostset.DIR = Path(sys.argv[1])
hostset.hold("pipe-max-size", Path(sys.argv[2]), "4194304", lambda v: int(v) >= 4194304)
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture()
def setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(hostset, "DIR", tmp_path / "hostset")
    f = tmp_path / "pipe-max-size"
    f.write_text("1048576\n")
    monkeypatch.setitem(hostset.SETTINGS, "pipe-max-size", f)
    return f


def _holder(setting: Path) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(hostset.DIR), str(setting)],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline() == "held\n"
    return p


def _enough(v: str) -> bool:
    return int(v) >= 4 << 20


def test_a_killed_holder_leaves_a_record_the_next_vzctl_acts_on(setting: Path) -> None:
    p = _holder(setting)
    assert setting.read_text() == "4194304"
    assert (hostset.DIR / "pipe-max-size.orig").read_text() == "1048576"
    hostset.repair()                    # its holder lives: nothing changes
    assert setting.read_text() == "4194304"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert setting.read_text() == "4194304"     # what a SIGKILL leaves
    hostset.repair()
    assert setting.read_text() == "1048576"
    assert sorted(os.listdir(hostset.DIR)) == ["pipe-max-size.lock"]


def test_the_last_of_two_users_gives_the_setting_back(setting: Path) -> None:
    p = _holder(setting)
    try:
        assert hostset.hold("pipe-max-size", setting, "4194304", _enough)
        hostset.release("pipe-max-size", setting)      # the other still needs it
        assert setting.read_text() == "4194304"
        assert hostset.hold("pipe-max-size", setting, "4194304", _enough)
    finally:
        p.kill()
        p.wait()
    hostset.release("pipe-max-size", setting)          # the last one (the other died)
    assert setting.read_text() == "1048576"


def test_a_reused_pid_is_not_taken_for_the_user(setting: Path) -> None:
    """A record names pid and start time: a live process with that pid but another
    start time is not its user."""
    hostset.DIR.mkdir(mode=0o700)
    (hostset.DIR / "pipe-max-size.orig").write_text("1048576")
    (hostset.DIR / f"pipe-max-size.{os.getpid()}.1").write_text("")
    setting.write_text("4194304")
    hostset.repair()
    assert setting.read_text() == "1048576"


def test_a_setting_already_high_enough_is_left_as_it_is(setting: Path) -> None:
    setting.write_text("8388608")
    assert hostset.hold("pipe-max-size", setting, "4194304", _enough)
    assert not (hostset.DIR / "pipe-max-size.orig").exists()
    hostset.release("pipe-max-size", setting)
    assert setting.read_text() == "8388608"


def test_repair_makes_nothing_when_nothing_was_left(setting: Path) -> None:
    hostset.repair()                    # every vzctl runs it: no directory, no lock
    assert not hostset.DIR.exists()
    assert setting.read_text() == "1048576\n"
