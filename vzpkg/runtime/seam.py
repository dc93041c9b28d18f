"""The seam to the resource side (CTID.conf parsing, cgroups).

Until the ``runtime-res`` branch lands this holds a minimal stand-in with the
same names; afterwards it only re-exports that branch's API.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
from dataclasses import dataclass, field
from pathlib import Path

from vzpkg.errors import ConfigError, VeError

_LINE = re.compile(r'^\s*([A-Z_][A-Z0-9_]*)\s*=\s*"?(.*?)"?\s*$')


@dataclass(frozen=True)
class VeConfig:
    values: dict[str, str] = field(default_factory=dict)

    def get(self, key: str) -> str | None:
        return self.values.get(key)

    def with_values(self, new: dict[str, str]) -> VeConfig:
        return VeConfig({**self.values, **new})

    @classmethod
    def load(cls, path: Path) -> VeConfig:
        vals: dict[str, str] = {}
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            m = _LINE.match(line)
            if not m:
                raise ConfigError(f"{path}:{n}: expected KEY=\"value\", got {line!r}")
            vals[m.group(1)] = m.group(2)
        return cls(vals)

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(f'{k}="{v}"\n' for k, v in self.values.items()))
        os.replace(tmp, path)


def load_global(vz_root: Path) -> VeConfig:
    p = vz_root / "etc" / "vz" / "vz.conf"
    return VeConfig.load(p) if p.is_file() else VeConfig()


class Cgroups:
    """Minimal v1 pids-controller tracking (stand-in)."""

    base = Path("/sys/fs/cgroup/pids/vzpkg")

    def _dir(self, ctid: int) -> Path:
        return self.base / str(ctid)

    def create(self, ctid: int) -> None:
        self._dir(ctid).mkdir(parents=True, exist_ok=True)

    def apply(self, ctid: int, cfg: VeConfig) -> None:
        numproc = cfg.get("NUMPROC")
        if numproc:
            lim = numproc.split(":")[-1]
            (self._dir(ctid) / "pids.max").write_text(
                "max" if lim in ("unlimited", "") else lim)

    def attach(self, ctid: int, pid: int) -> None:
        try:
            (self._dir(ctid) / "cgroup.procs").write_text(str(pid))
        except OSError as exc:
            raise VeError(f"cannot put pid {pid} into the cgroup of VE {ctid}: {exc}") \
                from None

    def procs(self, ctid: int) -> list[int]:
        try:
            return [int(x) for x in (self._dir(ctid) / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return []

    def kill_all(self, ctid: int) -> None:
        for pid in self.procs(ctid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def remove(self, ctid: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._dir(ctid).rmdir()


def detect() -> Cgroups:
    return Cgroups()


_SET_OPTS = (("numproc", "NUMPROC", "B:L", "processes and threads"),
             ("cpuunits", "CPUUNITS", "N", "CPU weight"),
             ("cpulimit", "CPULIMIT", "PCT", "CPU limit in percent of one CPU"),
             ("ram", "PHYSPAGES", "SIZE", "memory limit"),
             ("physpages", "PHYSPAGES", "B:L", "memory in pages"))


def add_set_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("resources")
    for opt, _key, meta, help_ in _SET_OPTS:
        g.add_argument(f"--{opt}", metavar=meta, help=help_)


def options_to_values(args: argparse.Namespace) -> dict[str, str]:
    out: dict[str, str] = {}
    for opt, key, _meta, _help in _SET_OPTS:
        v = getattr(args, opt, None)
        if v is not None:
            out[key] = v
    return out
