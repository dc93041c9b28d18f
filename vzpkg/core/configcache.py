"""Parsed configuration files kept between runs: a command that reads an unchanged
``vzpkg.yaml`` does not import PyYAML (some 15 ms of every ``vzpkg pull``).

:func:`parsed` answers a parse of a YAML file (the function that parses it is passed
in) from ``config/`` in the user cache directory (``$XDG_CACHE_HOME/vzpkg``, else
``~/.cache/vzpkg``) when the file is the one that was parsed, else parses it and keeps
the result.  What is kept is the parser's output itself (the mapping and the line of
each key), so every check of the values runs again on each use and its messages are
the same.

A kept parse is used only when

- its key matches: the file's absolute path, this file's format and the interpreter
  (version, executable, prefix, module path: which PyYAML parsed it);
- the file is as it was: device, inode, type and mode, owner, size, mtime and ctime
  (ctime moves on every change and cannot be set back, so an edit that keeps size and
  mtime is still seen); and PyYAML's own file is as it was.

A parse is not kept when the file changed less than two seconds before it was read (a
later change within the same file-system timestamp tick could not be told apart) or
while it was read, when it holds a value JSON does not carry exactly (a date, a set,
a key that is not a string), or when it failed.  Cache files are JSON (never pickle);
only files owned by the user and writable by no one else, in a directory of the
user's, are read.  An unreadable, corrupt or foreign file is a miss; a cache directory
that cannot be written is not written.  At most ``KEEP_FILES`` files are kept.

``VZPKG_NO_PLAN_CACHE=1`` (the switch of the plan cache, any value but empty or ``0``)
turns this cache off too.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

FORMAT = 1
RACY_NS = 2_000_000_000
KEEP_FILES = 64
DISABLE_ENV = "VZPKG_NO_PLAN_CACHE"      # settings_table's plan_cache row

Parsed = tuple[dict[Any, Any], dict[Any, int]]


def cache_dir() -> Path:
    """``config/`` in the user cache directory (see ``core.settings.user_cache_dir``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"),
                                                             ".cache")
    return Path(base) / "vzpkg" / "config"


def _disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "") not in ("", "0")


def _sig(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns,
            st.st_ctime_ns]


def _file_for(path: Path) -> Path:
    key = json.dumps([FORMAT, str(path), sys.version, sys.executable, sys.prefix,
                      sys.path[1:]], separators=(",", ":"))
    return cache_dir() / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")


def parsed(path: Path, parse: Callable[[Path], Parsed]) -> Parsed:
    """``parse(path)``, or what it gave for this very file before."""
    if _disabled():
        return parse(path)
    where = path.absolute()
    try:
        st = os.stat(where)
    except OSError:
        return parse(path)              # its error message says what is wrong
    file = _file_for(where)
    hit = _lookup(file, where, st)
    if hit is not None:
        return hit
    started = time.time_ns()
    result = parse(path)
    _store(file, where, st, started, result)
    return result


def _lookup(file: Path, path: Path, st: os.stat_result) -> Parsed | None:
    try:
        # no link, no FIFO to hang on, nothing written by someone else (root with a
        # user's HOME, say)
        dst = os.lstat(file.parent)
        if dst.st_mode & 0o170022 != 0o040000 or dst.st_uid != os.geteuid():
            return None
        fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as f:
            fst = os.fstat(fd)
            if fst.st_mode & 0o170022 != 0o100000 or fst.st_uid != os.geteuid():
                return None
            doc = json.loads(f.read())
        if doc["format"] != FORMAT or doc["path"] != str(path) or doc["stat"] != _sig(st):
            return None
        yaml_file, yaml_sig = doc["parser"]
        if _sig(os.stat(yaml_file)) != yaml_sig:
            return None
        data, lines = doc["data"], doc["lines"]
        if not isinstance(data, dict) or not isinstance(lines, dict) or \
                not all(isinstance(v, int) for v in lines.values()):
            return None
        return data, lines
    except Exception:       # missing, unreadable, corrupt, foreign: a miss, never an error
        return None


def _exact(value: Any) -> bool:
    """Whether JSON gives *value* back as it is (no date, bytes, set, tuple or
    key that is not a string)."""
    kind = type(value)
    if kind in (str, int, bool, float) or value is None:
        return True
    if kind is list:
        return all(_exact(v) for v in value)
    if kind is dict:
        return all(type(k) is str and _exact(v) for k, v in value.items())
    return False


def _store(file: Path, path: Path, st: os.stat_result, started: int,
           result: Parsed) -> None:
    """Keep *result* if the file was settled, is unchanged and JSON carries it."""
    data, lines = result
    if max(st.st_mtime_ns, st.st_ctime_ns) >= started - RACY_NS:
        return                          # changed just now: a same-tick change is invisible
    if not _exact(data) or not all(type(k) is str and type(v) is int
                                   for k, v in lines.items()):
        return
    yaml = sys.modules.get("yaml")
    yaml_file = getattr(yaml, "__file__", None)
    if not yaml_file:
        return
    try:
        if _sig(os.stat(path)) != _sig(st):
            return                      # changed while it was parsed
        doc = {"format": FORMAT, "path": str(path), "stat": _sig(st),
               "parser": [yaml_file, _sig(os.stat(yaml_file))], "data": data,
               "lines": lines}
        text = json.dumps(doc, separators=(",", ":"))
        directory = file.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        dst = os.lstat(directory)
        if dst.st_mode & 0o170022 != 0o040000 or dst.st_uid != os.geteuid():
            return                      # a link or someone else's: neither write nor prune
        tmp = directory / f".{file.name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                     os.O_CLOEXEC, 0o600)
        try:
            with open(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, file)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _prune(directory)
    except OSError:
        pass                            # a read-only home: parse every time


def _prune(directory: Path) -> None:
    """All but the newest KEEP_FILES cache files go."""
    kept: list[tuple[float, str]] = []
    with os.scandir(directory) as it:
        for e in it:
            if e.name.endswith(".json") and e.is_file(follow_symlinks=False):
                kept.append((e.stat(follow_symlinks=False).st_mtime, e.name))
    kept.sort(reverse=True)
    for _, name in kept[KEEP_FILES:]:
        (directory / name).unlink(missing_ok=True)
