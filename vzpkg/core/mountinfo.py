"""The kernel's table of mounts (``/proc/PID/mountinfo``), read one way everywhere.

In every path and option of that table (and of ``/proc/mounts``) the kernel writes
a space, tab, newline and backslash as an octal escape: ``\\040 \\011 \\012 \\134``.
:func:`unescape` is the one place that undoes them; a reader that undid only
``\\040`` took a mounted directory whose name holds a tab or a backslash for an
unmounted one, and the reverse.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

SELF = Path("/proc/self/mountinfo")

_ESCAPE = re.compile(rb"\\([0-3][0-7]{2})")


def unescape(field: bytes) -> str:
    """A field of the table as the name it stands for: every ``\\ooo`` decoded;
    bytes that are not UTF-8 kept as :func:`os.fsdecode` keeps them, so the
    result compares equal to ``str(path)`` of the same path."""
    if b"\\" in field:
        field = _ESCAPE.sub(lambda m: bytes((int(m.group(1), 8),)), field)
    return os.fsdecode(field)


class Mount(NamedTuple):
    """One line of the table, decoded."""

    root: str                   # the directory of its file system that is mounted
    point: str                  # where, as the reader's root sees it
    fstype: str
    source: str
    options: tuple[str, ...]    # the file system's (super block's) options


def parse(data: bytes) -> list[Mount]:
    """The mounts in *data* (the table's bytes); lines not of its form are skipped."""
    out = []
    for line in data.splitlines():
        left, sep, right = line.partition(b" - ")
        fields, rfields = left.split(b" "), right.split(b" ")
        if not sep or len(fields) < 5 or len(rfields) < 2:
            continue
        opts = rfields[2].split(b",") if len(rfields) > 2 else []
        out.append(Mount(unescape(fields[3]), unescape(fields[4]), unescape(rfields[0]),
                         unescape(rfields[1]), tuple(unescape(o) for o in opts)))
    return out


def read(path: str | Path = SELF) -> list[Mount]:
    """The mounts in the table at *path* (default: this process's); OSError if it
    cannot be read."""
    with open(path, "rb") as f:
        return parse(f.read())


def is_mount_point(point: str | Path, path: str | Path = SELF) -> bool:
    """Whether something is mounted on *point* (as given: not resolved)."""
    want = str(point)
    with open(path, "rb") as f:         # (only the fifth field: a third of read()'s time)
        return any(unescape(line.split(b" ", 5)[4]) == want
                   for line in f.read().splitlines() if line.count(b" ") > 5)
