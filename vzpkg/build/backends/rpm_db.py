"""The rpm database inside a root: where the target wants it, tidy it for packing.

The host's rpm (Debian's) keeps its database under ``~/.rpmdb`` unless told
otherwise; dnf and rpm run with a private HOME whose ``.rpmmacros`` sets
``%_dbpath`` to the target's path (see rpm_config.macros).  Reading the
installed packages is vzpkg.store.packages' job.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

_MACRO_RE = re.compile(r"^%_dbpath\s+(\S+)\s*$", re.M)
_EXPAND = {"%{_usr}": "/usr", "%{_prefix}": "/usr", "%{_var}": "/var",
           "%{_localstatedir}": "/var", "%{_sharedstatedir}": "/var/lib"}


def target_dbpath(root: Path) -> str | None:
    """The %_dbpath the target's own rpm uses, read from its macros file."""
    macros = root / "usr/lib/rpm/macros"
    if not macros.is_file():
        return None
    m = _MACRO_RE.search(macros.read_text(encoding="utf-8", errors="replace"))
    if not m:
        return None
    value = m.group(1)
    for k, v in _EXPAND.items():
        value = value.replace(k, v)
    return value if value.startswith("/") and "%" not in value else None


def checkpoint(root: Path, rel: str) -> None:
    """Fold the write-ahead logs of the sqlite databases in *root*/*rel* into
    the database files, so the tree holds no -wal/-shm files."""
    d = root / rel.lstrip("/")
    if not d.is_dir():
        return
    for db in sorted(d.glob("*.sqlite")):
        con = sqlite3.connect(db)
        try:
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            con.execute("PRAGMA journal_mode=DELETE")
        finally:
            con.close()
        for suffix in ("-wal", "-shm"):
            db.with_name(db.name + suffix).unlink(missing_ok=True)
