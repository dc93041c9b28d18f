"""Image hygiene after install: what must not be baked into a cache.

Applies to every backend:

* ``/etc/machine-id`` emptied (systemd fills it on first boot),
  ``/var/lib/dbus/machine-id`` removed;
* no ssh host keys (regenerated in the VE on first start);
* ``/etc/resolv.conf`` and ``/etc/hostname`` reset: the host's must not leak in;
  the runtime writes the VE's own;
* no logs (files under /var/log emptied, directories kept), no
  /var/cache/ldconfig/aux-cache, nothing in /tmp, /var/tmp, /run;
* ``/dev`` emptied: the runtime mounts a tmpfs with the standard devices at
  start, so the cache holds no device node at all;
* the backend's own caches and lists (apt lists and .debs, dnf caches) via
  ``Backend.clean``;
* optionally docs, man pages and locales (template options ``trim_docs`` and
  ``trim_locales``).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from vzpkg.template.model import Options

EMPTY_DIRS = ("tmp", "var/tmp", "run", "dev")
REMOVE = ("var/lib/dbus/machine-id", "var/cache/ldconfig/aux-cache",
          "etc/ssh/ssh_host_*", "var/log/journal/*", "root/.bash_history",
          "etc/apt/apt.conf.d/99vzpkg*")
DOC_DIRS = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/groff",
            "usr/share/lintian", "usr/share/linda")
KEEP_LOCALES = ("C.UTF-8", "C.utf8", "locale.alias", "en_US", "en")


def _clear_dir(d: Path) -> None:
    if d.is_symlink() or not d.is_dir():
        return
    for child in d.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _globs(root: Path, patterns: Iterable[str]) -> list[Path]:
    out: list[Path] = []
    for pat in patterns:
        out.extend(root.glob(pat))
    return out


def finalize(root: Path, options: Options) -> None:
    """Clean *root* in place (backend caches are cleaned by the backend)."""
    mid = root / "etc/machine-id"
    if mid.exists() or mid.is_symlink():
        mid.unlink()
    mid.write_text("")
    mid.chmod(0o444)
    for p in _globs(root, REMOVE):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    for rel in EMPTY_DIRS:
        _clear_dir(root / rel)
    logs = root / "var/log"
    if logs.is_dir():
        for f in logs.rglob("*"):
            if f.is_file() and not f.is_symlink():
                f.write_bytes(b"")
    for name, text in (("etc/resolv.conf", ""), ("etc/hostname", "localhost\n")):
        p = root / name
        if p.exists() or p.is_symlink():
            p.unlink()
        p.write_text(text)
    if options.trim_docs:
        for rel in DOC_DIRS:
            d = root / rel
            if d.is_dir():
                # keep copyright files: they are the licence texts
                for f in list(d.rglob("*")):
                    if f.name != "copyright" and (f.is_file() or f.is_symlink()):
                        f.unlink()
    if options.trim_locales:
        loc = root / "usr/share/locale"
        if loc.is_dir():
            for child in loc.iterdir():
                if child.name not in KEEP_LOCALES:
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
