"""The packages installed in a root file system tree, for the manifest.

Debian family: ``var/lib/dpkg/status`` is parsed directly (plus the
``var/lib/dpkg/status.d/`` files distroless-style images use).  RPM family: the
rpmdb found in the tree (``usr/lib/sysimage/rpm`` or ``var/lib/rpm``) is read
with the host's ``rpm --root``; rpm never runs anything from the tree for a
query.  A tree with neither gives ``()``.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from vzpkg.core.errors import StoreError
from vzpkg.core.types import InstalledPackage

DPKG_STATUS = "var/lib/dpkg/status"
DPKG_STATUS_D = "var/lib/dpkg/status.d"
RPMDB_DIRS = ("usr/lib/sysimage/rpm", "var/lib/rpm")
RPMDB_FILES = ("rpmdb.sqlite", "Packages", "Packages.db")
RPM_QF = r"%{NAME}\t%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\t%{ARCH}\n"


def _sorted(pkgs: list[InstalledPackage]) -> tuple[InstalledPackage, ...]:
    return tuple(sorted(set(pkgs), key=lambda p: (p.name, p.arch, p.version)))


def read_installed(root: Path) -> tuple[InstalledPackage, ...]:
    """Installed packages of the tree at *root*, sorted by name and arch."""
    status = root / DPKG_STATUS
    status_d = root / DPKG_STATUS_D
    if (status.is_file() and not status.is_symlink()) or status_d.is_dir():
        pkgs: list[InstalledPackage] = []
        if status.is_file() and not status.is_symlink():
            pkgs += parse_dpkg_status(_read_text(status), source=str(status))
        if status_d.is_dir() and not status_d.is_symlink():
            for f in sorted(status_d.iterdir()):
                if f.is_file() and not f.is_symlink() and not f.name.endswith(".md5sums"):
                    pkgs += parse_dpkg_status(_read_text(f), source=str(f))
        return _sorted(pkgs)
    dbpath = find_rpmdb(root)
    if dbpath is not None:
        return _sorted(query_rpmdb(root, dbpath))
    return ()


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the package database: {exc.strerror}") from None


def parse_dpkg_status(text: str, *, source: str) -> list[InstalledPackage]:
    """Packages whose Status says they are installed ("install|hold ok installed")."""
    out: list[InstalledPackage] = []
    for lineno, fields in _paragraphs(text):
        status = fields.get("status", "").split()
        if len(status) != 3 or status[1:] != ["ok", "installed"] or status[0] not in (
                "install", "hold"):
            continue
        missing = [k for k in ("package", "version", "architecture") if not fields.get(k)]
        if missing:
            raise StoreError(
                f"{source}:{lineno}: installed package entry has no "
                f"{', '.join(m.capitalize() for m in missing)} field",
                hint="the dpkg status file in the tree is damaged")
        out.append(InstalledPackage(fields["package"], fields["version"],
                                    fields["architecture"]))
    return out


def _paragraphs(text: str) -> list[tuple[int, dict[str, str]]]:
    """deb822 paragraphs: (first line number, lower-cased field -> value)."""
    paras: list[tuple[int, dict[str, str]]] = []
    cur: dict[str, str] = {}
    start = 0
    last: str | None = None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            if cur:
                paras.append((start, cur))
            cur, last = {}, None
            continue
        if line[0] in " \t":
            if last is not None:
                cur[last] += "\n" + line.strip()
            continue
        key, sep, value = line.partition(":")
        if not sep:
            continue
        if not cur:
            start = n
        last = key.strip().lower()
        cur[last] = value.strip()
    if cur:
        paras.append((start, cur))
    return paras


def find_rpmdb(root: Path) -> str | None:
    """The rpmdb directory inside *root* as an absolute in-tree path, or None."""
    for d in RPMDB_DIRS:
        path = root / d
        if path.is_dir() and not path.is_symlink() and any(
                (path / f).is_file() for f in RPMDB_FILES):
            return "/" + d
    return None


def query_rpmdb(root: Path, dbpath: str) -> list[InstalledPackage]:
    """Every package in the rpmdb at *dbpath* (inside *root*), via the host's rpm."""
    rpm = shutil.which("rpm")
    if rpm is None:
        raise StoreError(f"{root}{dbpath}: the tree has an rpm database but the host has "
                         "no 'rpm' command to read it", hint="install the rpm package")
    # rpm may create lock, -wal and -shm files next to the database even for a
    # query: read a copy so the tree (about to be packed) stays as it is.
    with tempfile.TemporaryDirectory(prefix="vzpkg-rpmdb-") as tmp:
        copy = Path(tmp) / dbpath.lstrip("/")
        shutil.copytree(root / dbpath.lstrip("/"), copy, symlinks=True)
        r = subprocess.run(
            [rpm, "--root", tmp, "--dbpath", dbpath, "-qa", "--qf", RPM_QF],
            capture_output=True, text=True, check=False,
            env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"})
    if r.returncode != 0:
        err = r.stderr.strip().splitlines()
        raise StoreError(f"{root}{dbpath}: rpm could not read the package database: "
                         f"{err[-1] if err else 'exit ' + str(r.returncode)}",
                         hint="the host's rpm may be too old for this database format")
    out: list[InstalledPackage] = []
    for line in r.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) != 3 or parts[0] == "gpg-pubkey":
            continue          # gpg-pubkey entries are imported keys, not packages
        name, version, arch = parts
        out.append(InstalledPackage(name, version, arch))
    return out
