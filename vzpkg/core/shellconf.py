"""Shell-style ``KEY="value"`` files (OpenVZ's vz.conf and CTID.conf), read without a shell.

The runtime's configuration (:mod:`vzpkg.runtime.config`) and the mirror settings in
``vz.conf`` (:mod:`vzpkg.mirror.config`) both read these lines; the meaning of the keys
is theirs.  Comments, blank lines and ``export`` are kept as written.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from vzpkg.core.errors import ConfigError

KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FIX = 'write it as KEY="value", or start the line with # to make it a comment'


class ConfLine(NamedTuple):
    """One line of a ``KEY="value"`` file: a setting, a comment or a blank."""

    text: str               # the line as read (rewritten when its value changes)
    key: str | None = None  # None for comments and blank lines
    value: str | None = None


def parse_line(line: str, where: str) -> ConfLine:
    s = line.strip()
    if not s or s.startswith("#"):
        return ConfLine(line)
    body = s.removeprefix("export ").lstrip()
    m = KEY_RE.match(body)
    if not m or body[m.end():m.end() + 1] != "=":
        raise ConfigError(f"{where}: expected KEY=\"value\", got {s[:60]!r}", hint=_FIX)
    key, rest = m.group(0), body[m.end() + 1:]
    value, tail = _parse_value(rest, where, key)
    tail = tail.strip()
    if tail and not tail.startswith("#"):
        raise ConfigError(f"{where}: {key}: unexpected text after the value: {tail[:40]!r}",
                          hint='quote values that contain spaces: KEY="a b"')
    return ConfLine(line, key, value)


def _parse_value(rest: str, where: str, key: str) -> tuple[str, str]:
    if rest.startswith('"'):
        out: list[str] = []
        i = 1
        while i < len(rest):
            c = rest[i]
            if c == "\\" and i + 1 < len(rest) and rest[i + 1] in '"\\$`':
                out.append(rest[i + 1])
                i += 2
                continue
            if c == '"':
                return "".join(out), rest[i + 1:]
            out.append(c)
            i += 1
        raise ConfigError(f"{where}: {key}: the value has no closing quote",
                          hint=f'end it with a quote: {key}="..."')
    if rest.startswith("'"):
        end = rest.find("'", 1)
        if end < 0:
            raise ConfigError(f"{where}: {key}: the value has no closing quote",
                              hint=f"end it with a quote: {key}='...'")
        return rest[1:end], rest[end + 1:]
    m = re.match(r"[^\s#\"']*", rest)
    assert m is not None
    return m.group(0), rest[m.end():]


def one_line(value: str) -> bool:
    """Whether *value* reads back as the one line it is written on: no "\\n", nor "\\r"
    or another break that :meth:`str.splitlines` (the reader) splits at."""
    return value.splitlines() == [value] or not value


def quote(value: str) -> str:
    return '"' + re.sub(r'(["\\$`])', r"\\\1", value) + '"'


def read_assignments(path: Path) -> dict[str, str]:
    """Every ``KEY=value`` of *path* (the last assignment wins, as in a shell);
    empty when the file does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    out: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = parse_line(raw, f"{path}:{n}")
        if line.key is not None and line.value is not None:
            out[line.key] = line.value
    return out
