"""Shared test plumbing: run the CLIs as a user would, in throwaway workspaces."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(prog: str, args: Sequence[str | Path], *, cwd: Path | None = None,
            env: dict[str, str] | None = None, timeout: float = 900,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run vzpkg/vzctl/vzlist as a subprocess with this interpreter."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", f"vzpkg.cli.{prog}", *map(str, args)],
                          cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout, input=input, check=False)


def assert_user_error(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    """A clean failure: non-zero exit, no traceback, the message names *needles*."""
    assert r.returncode != 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in r.stderr, f"{n!r} not in:\n{r.stderr}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts or "network" in parts:
            item.add_marker(pytest.mark.root)
            if os.geteuid() != 0:
                item.add_marker(pytest.mark.skip(reason="needs root (namespaces, mounts)"))
        if "network" in parts:
            item.add_marker(pytest.mark.network)
