"""RepoState.of: the repository-state digest both backends compute.  Stored
manifests (repo_digest) compare against it, so its value is pinned here: a
change of the formula fails this test, not a user's up-to-date check."""

from __future__ import annotations

from vzpkg.build.backends import RepoState

DEB = ("http://deb.example.org/debian/dists/bookworm/InRelease", "0" * 64)
RPM = ("http://rpm.example.org/9/BaseOS/x86_64/os/repodata/repomd.xml", "f" * 64)


def test_the_digest_of_fixed_files_is_pinned() -> None:
    state = RepoState.of([DEB, RPM], 1700000000)
    assert state.digest == "4c01d9c5eeaa5a49ed0e938491f3f3e2c2dd072fb4b3078852017d32e43a3cb1"
    assert state.source_date == 1700000000
    assert state.files == (DEB, RPM)


def test_the_order_of_the_files_counts_and_any_iterable_will_do() -> None:
    reverse = RepoState.of(iter([RPM, DEB]), 0)
    assert reverse.digest == "24d1504e585b63cc24ed0cbab0aeca6410e222ef99f7e56fc1bbf00e5c43e5c6"
    assert reverse.files == (RPM, DEB)


def test_no_files_give_the_digest_of_nothing() -> None:
    assert RepoState.of((), 0).digest == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
