"""A CRIU restore that hangs (its page server gone) is killed after a bound, not
waited for for ever (runtime/restore.py: wait_bounded, restore_timeout)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vzpkg.runtime import restore


def _spawn(*argv: str) -> int:
    return os.posix_spawnp(argv[0], argv, os.environ)    # reaped by wait_bounded


def test_a_child_past_its_bound_is_killed_and_reaped() -> None:
    pid = _spawn("sleep", "600")
    assert restore.wait_bounded(pid, 0.3) is None
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)       # already reaped: no zombie left


def test_a_child_within_its_bound_gives_its_exit_status() -> None:
    assert restore.wait_bounded(_spawn("sh", "-c", "exit 3"), 60) == 3
    assert restore.wait_bounded(_spawn("sh", "-c", "kill -9 $$"), 60) == 128


def test_the_bound_grows_with_the_memory_images_and_can_be_set(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(restore.TIMEOUT_ENV, raising=False)
    with open(tmp_path / "pages-1.img", "wb") as f:
        f.truncate(2_000_000_000)         # sparse: 2 GB of memory images
    assert restore.restore_timeout(tmp_path, lazy=True) == 120
    assert restore.restore_timeout(tmp_path, lazy=False) == 320
    monkeypatch.setenv(restore.TIMEOUT_ENV, "7")
    assert restore.restore_timeout(tmp_path, lazy=False) == 7
    monkeypatch.setenv(restore.TIMEOUT_ENV, "soon")      # not a number: the default
    assert restore.restore_timeout(tmp_path, lazy=True) == 120
