"""remove_tree: deep trees, symlinks out of the tree, few open files."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vzpkg.core.fstree import remove_tree

REPO = Path(__file__).resolve().parents[2]


def deep_tree(top: Path, depth: int) -> None:
    """*depth* nested directories ``d`` below *top*, with a file at some levels;
    made through descriptors (the full path is longer than PATH_MAX)."""
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(depth):
            os.mkdir("d", dir_fd=fd)
            if i % 100 == 0:
                f = os.open(f"f{i}", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
                os.close(f)
                os.symlink("/", "root-link", dir_fd=fd)
            nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
    finally:
        os.close(fd)


def test_a_tree_deeper_than_the_recursion_limit(tmp_path: Path) -> None:
    top = tmp_path / "deep"
    deep_tree(top, 3000)
    with pytest.raises((RecursionError, OSError)):      # what destroy hit before
        shutil.rmtree(top)
    remove_tree(top)
    assert not top.exists() and list(tmp_path.iterdir()) == []


def test_a_deep_tree_with_few_open_files(tmp_path: Path) -> None:
    """3,000 levels under a limit of 16 open files: one descriptor per level
    would need 3,000."""
    top = tmp_path / "deep"
    deep_tree(top, 3000)

    def few_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (16, 16))

    r = subprocess.run([sys.executable, "-c",
                        "import sys; from vzpkg.core.fstree import remove_tree; "
                        "remove_tree(sys.argv[1])", str(top)],
                       cwd=REPO, preexec_fn=few_files, capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert not top.exists()


def test_symlinks_are_removed_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "keep").write_text("mine")
    (outside / "sub" / "keep2").write_text("mine too")
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "file").write_text("x")
    (tree / "a" / "dirlink").symlink_to(outside)
    (tree / "a" / "b" / "rel").symlink_to("../../../outside")
    (tree / "filelink").symlink_to(outside / "keep")
    remove_tree(tree)
    assert not tree.exists()
    assert (outside / "keep").read_text() == "mine"
    assert (outside / "sub" / "keep2").read_text() == "mine too"
    # a symlink named as the tree itself: the link goes, its target stays
    link = tmp_path / "link"
    link.symlink_to(outside)
    remove_tree(link)
    assert not link.is_symlink() and (outside / "sub" / "keep2").exists()


def test_odd_entries_and_a_missing_tree(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "locked" / "inner").mkdir(parents=True)
    (tree / "locked" / "inner" / "f").write_text("x")
    os.mkfifo(tree / "fifo")
    (tree / "locked").chmod(0)
    remove_tree(tree)
    assert not tree.exists()
    with pytest.raises(FileNotFoundError):
        remove_tree(tree)
