"""The temporary VE used while building: a root directory, namespaces and mounts.

(Interface first; the implementation lands with the Debian builder.)
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from vzpkg.metadata.model import Script


class BuildLog:
    """The build's log file; host commands run through it keep their output."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, text: str) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(text if text.endswith("\n") else text + "\n")

    def run(self, argv: Sequence[str], *, step: str, env: Mapping[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run a host command, output appended to the log; BuildError on failure."""
        raise NotImplementedError


class BuildVE:
    """Mounts /proc, /sys, /dev into *root*; runs commands chrooted in new
    pid, mount, uts and ipc namespaces; undoes everything on exit."""

    def __init__(self, root: Path, log: BuildLog) -> None:
        self.root = root
        self.log = log

    def __enter__(self) -> BuildVE:
        raise NotImplementedError

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        raise NotImplementedError

    def run(self, argv: Sequence[str], *, step: str,
            env: Mapping[str, str] | None = None) -> None:
        """Run *argv* inside the VE; BuildError naming *step* on failure."""
        raise NotImplementedError

    def run_script(self, script: Script, env: Mapping[str, str]) -> None:
        raise NotImplementedError
