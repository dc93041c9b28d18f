"""File helpers shared by the store, the build and the mirror."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (the latter makes renames in it durable)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(file: Path | BinaryIO) -> str:
    """sha256 of a file, by path or of an open file from its start."""
    if isinstance(file, Path):
        with file.open("rb") as f:
            return sha256_file(f)
    h = hashlib.sha256()
    file.seek(0)
    while chunk := file.read(CHUNK):
        h.update(chunk)
    return h.hexdigest()
