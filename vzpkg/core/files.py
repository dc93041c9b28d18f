"""File helpers shared by the store, the build and the mirror."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20


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
