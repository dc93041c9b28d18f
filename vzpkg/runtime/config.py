"""CTID.conf and vz.conf: OpenVZ's ``KEY="value"`` files.

A :class:`VeConfig` keeps every line it read — comments, blank lines, keys the
parameter table does not know — so a ``vzctl set --save`` changes only the lines
it must.  Values of known keys are checked against :mod:`vzpkg.runtime.params`
when the file is read; a bad line is a :class:`ConfigError` naming ``file:line``.

Files live under ``VZ_ROOT/etc/vz``: ``vz.conf`` (global defaults) and
``conf/CTID.conf`` plus ``conf/ve-NAME.conf-sample`` (what ``vzctl create
--config NAME`` copies).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from vzpkg.core.errors import ConfigError
from vzpkg.core.shellconf import KEY_RE, ConfLine, one_line, parse_line, quote
from vzpkg.runtime.params import (
    PAGE_SIZE,
    UNLIMITED,
    ParamError,
    find_param,
    normalize,
    parse_barrier_limit,
    parse_cpumask,
    split_list,
)
from vzpkg.runtime.params import ParamKind as K

_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def _check(key: str, value: str, where: str) -> str:
    p = find_param(key)
    if p is None:
        return value
    try:
        normalize(p, value)
    except ParamError as exc:
        raise ConfigError(f"{where}: {key}: {exc}",
                          hint=f'{key}="{p.metavar}": {p.help}') from None
    return value


@dataclass(frozen=True)
class VeConfig:
    """An immutable CTID.conf / vz.conf; ``with_values`` returns a changed copy."""

    lines: tuple[ConfLine, ...] = ()
    path: Path | None = None

    # -- reading ----------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str, path: Path | None = None) -> VeConfig:
        name = str(path) if path else "<config>"
        lines: list[ConfLine] = []
        for n, raw in enumerate(text.splitlines(), 1):
            cl = parse_line(raw, f"{name}:{n}")
            if cl.key is not None and cl.value is not None:
                _check(cl.key, cl.value, f"{name}:{n}")
            lines.append(cl)
        return cls(tuple(lines), path)

    @classmethod
    def load(cls, path: Path) -> VeConfig:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such configuration file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read: {exc}") from None
        return cls.parse(text, path)

    def get(self, key: str) -> str | None:
        """The value of *key* (the last assignment wins, as in a shell), else None."""
        for cl in reversed(self.lines):
            if cl.key == key:
                return cl.value
        return None

    def get_default(self, key: str) -> str | None:
        """The value, or the table's default for a known key."""
        v = self.get(key)
        if v is None:
            p = find_param(key)
            return p.default if p else None
        return v

    def items(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for cl in self.lines:
            if cl.key is not None and cl.value is not None:
                out.pop(cl.key, None)
                out[cl.key] = cl.value
        return out

    def keys(self) -> list[str]:
        return list(self.items())

    def _where(self, key: str) -> str:
        name = str(self.path) if self.path else "<config>"
        for n, cl in reversed(list(enumerate(self.lines, 1))):
            if cl.key == key:
                return f"{name}:{n}: {key}"
        return f"{name}: {key}"

    def _typed(self, key: str) -> str | None:
        return self.get_default(key)

    def get_int(self, key: str) -> int | None:
        v = self._typed(key)
        if v is None or v == "":
            return None
        try:
            return int(v.strip().removesuffix("%"))
        except ValueError:
            raise ConfigError(f"{self._where(key)}: {v!r} is not a whole number") from None

    def get_bool(self, key: str) -> bool:
        return (self._typed(key) or "no").strip().lower() in ("yes", "on", "true", "1")

    def get_list(self, key: str) -> list[str]:
        return split_list(self._typed(key) or "")

    def cpumask(self) -> tuple[int, ...] | None:
        """The CPUs of CPUMASK, or None for all."""
        v = self._typed("CPUMASK")
        if not v:
            return None
        try:
            return parse_cpumask(v)
        except ParamError as exc:
            raise ConfigError(f"{self._where('CPUMASK')}: {exc}") from None

    def barrier_limit(self, key: str) -> tuple[int, int] | None:
        """``(barrier, limit)`` of a barrier:limit key, in its unit (pages for
        PHYSPAGES/SWAPPAGES); :data:`UNLIMITED` for unlimited; None when unset."""
        v = self._typed(key)
        if v is None or v == "":
            return None
        p = find_param(key)
        try:
            return parse_barrier_limit(v, pages=p is not None and p.kind is K.PAGES,
                                       sizes=p is not None and p.kind is K.BYTES)
        except ParamError as exc:
            raise ConfigError(f"{self._where(key)}: {exc}") from None

    def barrier_limit_bytes(self, key: str) -> tuple[int, int] | None:
        """Like :meth:`barrier_limit` for a pages key, in bytes (UNLIMITED kept)."""
        bl = self.barrier_limit(key)
        if bl is None:
            return None
        b, lim = bl
        return (b if b >= UNLIMITED else b * PAGE_SIZE,
                lim if lim >= UNLIMITED else lim * PAGE_SIZE)

    def size_bytes(self, key: str) -> int | None:
        """The limit of a pages key in bytes, None when unset or unlimited."""
        bl = self.barrier_limit_bytes(key)
        return None if bl is None or bl[1] >= UNLIMITED else bl[1]

    def expanded(self, key: str, **variables: str) -> str | None:
        """The value with ``$VAR``/``${VAR}`` replaced (e.g. ``VEID="101"``)."""
        v = self.get(key)
        return None if v is None else expand(v, variables)

    # -- changing ---------------------------------------------------------------------
    def with_values(self, values: Mapping[str, str | None]) -> VeConfig:
        """A copy with *values* set (None removes a key).  The last line of an
        existing key is rewritten in place; new keys are appended in order."""
        lines = list(self.lines)
        for key, value in values.items():
            if not KEY_RE.fullmatch(key):
                raise ConfigError(f"{key!r} is not a valid configuration key",
                                  hint="keys are letters, digits and _")
            if value is None:
                lines = [cl for cl in lines if cl.key != key]
                continue
            if not one_line(value):
                raise ConfigError(f"{key}: a value cannot contain a newline",
                                  hint=f"give {key} a value of one line")
            _check(key, value, self._where(key))
            new = ConfLine(f"{key}={quote(value)}", key, value)
            idx = [i for i, cl in enumerate(lines) if cl.key == key]
            if idx:
                if lines[idx[-1]].value != value:
                    lines[idx[-1]] = new
            else:
                lines.append(new)
        return replace(self, lines=tuple(lines))

    def layered_on(self, base: VeConfig) -> VeConfig:
        """*base* (e.g. vz.conf) with this config's values on top."""
        return replace(base.with_values(self.items()), path=None)

    def render(self) -> str:
        return "".join(cl.text + "\n" for cl in self.lines)

    def save(self, path: Path | None = None) -> None:
        """Write atomically (temp file, fsync, rename) to *path* or where it was read."""
        target = path or self.path
        if target is None:
            raise ConfigError("this configuration has no file to save to")
        atomic_write(target, self.render())


def atomic_write(target: Path, text: str, mode: int = 0o644) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dfd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def expand(value: str, variables: Mapping[str, str]) -> str:
    """Replace ``$NAME`` / ``${NAME}`` from *variables*; unknown names stay as they are."""
    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return variables.get(name, m.group(0))
    return _VAR.sub(sub, value)


# -- files under VZ_ROOT --------------------------------------------------------------

def etc_dir(vz_root: Path) -> Path:
    return vz_root / "etc" / "vz"


def conf_dir(vz_root: Path) -> Path:
    return etc_dir(vz_root) / "conf"


def ve_conf_path(vz_root: Path, ctid: str) -> Path:
    return conf_dir(vz_root) / f"{ctid}.conf"


def sample_path(vz_root: Path, name: str) -> Path:
    return conf_dir(vz_root) / f"ve-{name}.conf-sample"


def default_global_conf() -> str:
    return _GLOBAL


def lenient_values(path: Path) -> dict[str, str]:
    """What a CTID.conf assigns, without checking the values, skipping the lines that
    do not parse; empty when it cannot be read.  For the checks that span every VE
    (an address or a name given twice): a VE whose configuration has a bad line
    still holds its address and its name."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    out: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        try:
            cl = parse_line(raw, f"{path}:{n}")
        except ConfigError:
            continue
        if cl.key is not None and cl.value is not None:
            out[cl.key] = cl.value
    return out


def load_global(vz_root: Path) -> VeConfig:
    """``VZ_ROOT/etc/vz/vz.conf``, or the built-in defaults when it is absent."""
    path = etc_dir(vz_root) / "vz.conf"
    if path.is_file():
        return VeConfig.load(path)
    return VeConfig.parse(_GLOBAL)


def sample_names(vz_root: Path | None = None) -> list[str]:
    names = set(SAMPLES)
    if vz_root is not None and conf_dir(vz_root).is_dir():
        names.update(p.name[3:-len(".conf-sample")]
                     for p in conf_dir(vz_root).glob("ve-*.conf-sample"))
    return sorted(names)


SAMPLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def load_sample(vz_root: Path, name: str) -> VeConfig:
    """The sample config *name*: ``ve-NAME.conf-sample`` under VZ_ROOT, else built in."""
    if not SAMPLE_NAME.fullmatch(name):
        raise ConfigError(f"bad sample configuration name {name!r}: it names the file "
                          "etc/vz/conf/ve-NAME.conf-sample, so letters, digits, '.', '_' "
                          "and '-' only",
                          hint="available: " + ", ".join(sample_names(vz_root)))
    path = sample_path(vz_root, name)
    if path.is_file():
        return replace(VeConfig.load(path), path=None)
    if name in SAMPLES:
        return VeConfig.parse(SAMPLES[name])
    raise ConfigError(f"no sample configuration {name!r} ({path} does not exist)",
                      hint="available: " + ", ".join(sample_names(vz_root)))


def install_defaults(vz_root: Path) -> None:
    """Write vz.conf and the built-in samples under VZ_ROOT where they are missing."""
    vz = etc_dir(vz_root) / "vz.conf"
    if not vz.exists():
        atomic_write(vz, _GLOBAL)
    for name, text in SAMPLES.items():
        p = sample_path(vz_root, name)
        if not p.exists():
            atomic_write(p, text)


_GLOBAL = """\
## Global vzpkg runtime configuration (OpenVZ vz.conf style).
## Values here are defaults for every VE; a VE's CTID.conf overrides them.

## Where the VEs live, as in OpenVZ (unset: VZ_ROOT/root, VZ_ROOT/private and
## VZ_ROOT/template); each directory must be root's alone (mode 0700)
#VE_ROOT="/vz/root/$VEID"
#VE_PRIVATE="/vz/private/$VEID"
#TEMPLATE="/vz/template"

## Defaults for `vzctl create`
CONFIGFILE="basic"
DEF_OSTEMPLATE="debian-12"
VE_LAYOUT="plain"

## Seconds `vzctl stop` waits for the VE's init before killing what is left
STOP_TIMEOUT="60"

## Resources not limited by a VE's config
CPUUNITS="1000"
"""

SAMPLES: dict[str, str] = {
    "basic": """\
# A small general-purpose VE: 512 MiB RAM, 512 MiB swap, 1024 processes.
CPUUNITS="1000"
CPULIMIT="0"
PHYSPAGES="0:131072"
SWAPPAGES="0:131072"
NUMPROC="1024:1024"
""",
    "light": """\
# A light VE: 256 MiB RAM, no swap, 256 processes, at most one CPU.
CPUUNITS="500"
CPULIMIT="100"
PHYSPAGES="0:65536"
SWAPPAGES="0:0"
NUMPROC="256:256"
""",
    "unlimited": """\
# No resource limits: the VE competes with the host on equal terms.
CPUUNITS="1000"
CPULIMIT="0"
PHYSPAGES="unlimited:unlimited"
SWAPPAGES="unlimited:unlimited"
NUMPROC="unlimited:unlimited"
""",
}
