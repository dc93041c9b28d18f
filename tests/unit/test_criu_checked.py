"""The record of CRIUs that passed ``criu check`` on this boot (vzpkg.runtime.criu).

A check costs about half a second (inside a migration's freeze), so a passed one
is remembered per binary; a second CRIU's check (a wrapper in a test, a $CRIU)
must not make the host check its usual one again, and a changed binary must be
checked again.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vzpkg.runtime import criu


@pytest.fixture
def record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "run" / "criu-checked.json"
    monkeypatch.setattr(criu, "CHECKED", path)
    return path


def _binary(tmp_path: Path, name: str) -> tuple[str, ...]:
    path = tmp_path / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return (str(path),)


def test_each_checked_criu_is_remembered_beside_the_others(tmp_path: Path,
                                                           record: Path) -> None:
    usual, wrapper = _binary(tmp_path, "criu"), _binary(tmp_path, "wrapper")
    criu._remember(criu.Criu(usual, "4.2", "PATH"))
    criu._remember(criu.Criu(wrapper, "4.2", "$CRIU"))
    assert record.is_file()
    hit = criu._cached(usual, "PATH")
    assert hit is not None and hit.argv == usual and hit.version == "4.2"
    assert criu._cached(wrapper, "$CRIU") is not None
    # a binary that changed is checked again; the other stays remembered
    Path(wrapper[0]).write_text("#!/bin/sh\nexit 1\n# changed\n")
    assert criu._cached(wrapper, "$CRIU") is None
    assert criu._cached(usual, "PATH") is not None


def test_the_record_is_bounded_and_survives_an_old_or_bad_file(tmp_path: Path,
                                                               record: Path) -> None:
    record.parent.mkdir()
    record.write_text('{"argv": ["/usr/sbin/criu"], "version": "4.1", "stamp": "x"}')
    assert criu._cached(("/usr/sbin/criu",), "PATH") is None      # the old format
    bins = [_binary(tmp_path, f"criu{i}") for i in range(criu.REMEMBERED + 2)]
    for b in bins:
        criu._remember(criu.Criu(b, "4.2", "x"))
    assert criu._cached(bins[0], "x") is None                      # the oldest went
    assert all(criu._cached(b, "x") is not None for b in bins[2:])
    record.write_text("not json")
    assert criu._cached(bins[-1], "x") is None
    criu._remember(criu.Criu(bins[-1], "4.2", "x"))
    assert criu._cached(bins[-1], "x") is not None
