"""Host settings (sysctls) a vzctl changes only while it needs them, given back
even when it is killed.

A lazy migration needs two kernel settings for a while (:mod:`lazy`):
``fs.pipe-max-size`` while the source's page server runs and
``vm.unprivileged_userfaultfd`` during the restore.  A vzctl killed meanwhile
cannot put them back itself, so the change is recorded before it is made, in
``/run/vzctl/hostset/``:

- ``KEY.orig``: the value the host had, written (fsynced, renamed) before the
  setting is changed, removed once it is given back;
- ``KEY.PID.START``: one per vzctl that needs the setting now (its pid and the
  start time the kernel gives it, so that a reused pid is not taken for it).

Several vzctls may need one setting at once: the first changes it, the last one
to go gives it back.  :func:`repair`, which every vzctl and vzmigrate runs first,
drops the records of processes that are gone and gives a setting back when no
one needing it is left.  Everything happens under ``KEY.lock`` (flock).

The records are host-wide, not per ``VZ_ROOT``: the settings are the kernel's,
shared by every root on the host; and ``/run`` goes with a reboot, as the changed
values do.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path

DIR = Path("/run/vzctl/hostset")


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    rest = raw[raw.rindex(b")") + 2:].split()
    return None if rest[0] in (b"Z", b"X") else rest[19].decode()


def _me() -> str:
    return f"{os.getpid()}.{_start_time(os.getpid())}"


def _alive(record: str) -> bool:
    pid, _, start = record.partition(".")
    return pid.isdigit() and _start_time(int(pid)) == start


@contextlib.contextmanager
def _locked(key: str) -> Iterator[None]:
    DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(DIR / f"{key}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _users(key: str) -> list[str]:
    """The live users of *key* (their records); the records of the dead go."""
    live = []
    for name in os.listdir(DIR):
        if name.startswith(f"{key}.") and name[len(key) + 1:][:1].isdigit():
            who = name[len(key) + 1:]
            if _alive(who):
                live.append(who)
            else:
                (DIR / name).unlink(missing_ok=True)
    return live


def _write_new(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _give_back(key: str, setting: Path) -> None:
    """With no live user left: put the recorded value back (under the lock)."""
    orig = DIR / f"{key}.orig"
    try:
        value = orig.read_text()
    except FileNotFoundError:
        return
    with contextlib.suppress(OSError):
        setting.write_text(value)
    orig.unlink(missing_ok=True)


def hold(key: str, setting: Path, value: str, enough: Callable[[str], bool]) -> bool:
    """Make sure *setting* is *value* (or already *enough*) while this process needs
    it; True if it is recorded as a user (then :func:`release` it).  False if the
    setting cannot be read (a kernel without it)."""
    with _locked(key):
        users = _users(key)
        if not users:
            _give_back(key, setting)      # a user was killed: start from the host's
        try:
            now = setting.read_text().strip()
        except OSError:
            return False
        if not enough(now):
            if not (DIR / f"{key}.orig").exists():
                _write_new(DIR / f"{key}.orig", now)
            setting.write_text(value)
        _write_new(DIR / f"{key}.{_me()}", "")
        return True


def release(key: str, setting: Path) -> None:
    """This process no longer needs *setting*: the last user gives it back."""
    with contextlib.suppress(OSError), _locked(key):
        (DIR / f"{key}.{_me()}").unlink(missing_ok=True)
        if not _users(key):
            _give_back(key, setting)


SETTINGS: dict[str, Path] = {
    "pipe-max-size": Path("/proc/sys/fs/pipe-max-size"),
    "unprivileged_userfaultfd": Path("/proc/sys/vm/unprivileged_userfaultfd"),
}


def repair() -> None:
    """Give back every setting whose users are all gone (killed before they could).
    Cheap when there is nothing to do: one directory listing."""
    try:
        names = os.listdir(DIR)
    except OSError:
        return
    for key, setting in SETTINGS.items():
        if f"{key}.orig" in names:
            with contextlib.suppress(OSError), _locked(key):
                if not _users(key):
                    _give_back(key, setting)
