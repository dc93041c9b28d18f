"""``--set KEY=VALUE`` parsing, apart from the renderer: the command line parses
its overrides before a cached plan is looked up, and this must not import
the loader stack (yaml, jinja2) to do it."""

from __future__ import annotations

import re
from collections.abc import Sequence

from vzpkg.core.errors import UsageError


def parse_assignments(items: Sequence[str]) -> dict[str, str]:
    """``["mirrors.debian=URL", "a=b"]`` (from ``--set``) as a mapping."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)?", key):
            raise UsageError(f"--set {item!r}: expected KEY=VALUE",
                             hint="e.g. --set mirrors.debian=http://mirror.example/debian")
        out[key] = value
    return out
