"""``host_mirror(name)``: the archive URL the host's own apt uses.

Reads ``sources.list`` and ``sources.list.d/*.list`` (one-line format) and
``sources.list.d/*.sources`` (deb822).  An archive *name* such as ``debian``
or ``debian-security`` is served by the first ``deb`` entry whose URI has a
path component equal to the name; failing that, by an entry whose suites look
like that archive's (``*-security`` for ``debian-security``; anything else
signed by a Debian keyring for ``debian``).

No mirror host name is ever written into the repository: templates call this.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from vzpkg.core.errors import TemplateError

APT_DIR = Path("/etc/apt")


@dataclass(frozen=True)
class AptSource:
    uri: str
    suites: tuple[str, ...]
    signed_by: str
    origin: str          # file the entry came from


def _one_line(path: Path) -> list[AptSource]:
    out: list[AptSource] = []
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.match(r"^(deb|deb-src)\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)", line)
        if not m or m.group(1) != "deb":
            continue
        opts = dict(o.split("=", 1) for o in (m.group(2) or "").split() if "=" in o)
        out.append(AptSource(m.group(3), (m.group(4),), opts.get("signed-by", ""),
                             str(path)))
    return out


def _deb822(path: Path) -> list[AptSource]:
    out: list[AptSource] = []
    text = path.read_text(encoding="utf-8", errors="replace")
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        last = ""
        for raw in stanza.splitlines():
            if raw.startswith("#") or not raw.strip():
                continue
            if raw[0] in " \t" and last:
                fields[last] += "\n" + raw.strip()
                continue
            if ":" in raw:
                k, v = raw.split(":", 1)
                last = k.strip().lower()
                fields[last] = v.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() in ("no", "false", "0"):
            continue
        suites = tuple(fields.get("suites", "").split())
        for uri in fields.get("uris", "").split():
            out.append(AptSource(uri, suites, fields.get("signed-by", ""), str(path)))
    return out


def apt_sources(apt_dir: Path = APT_DIR) -> list[AptSource]:
    """Every enabled binary ('deb') entry, in apt's reading order."""
    out: list[AptSource] = []
    main = apt_dir / "sources.list"
    if main.is_file():
        out += _one_line(main)
    d = apt_dir / "sources.list.d"
    if d.is_dir():
        for f in sorted(d.iterdir()):
            if f.suffix == ".list" and f.is_file():
                out += _one_line(f)
            elif f.suffix == ".sources" and f.is_file():
                out += _deb822(f)
    return out


def _components(uri: str) -> list[str]:
    return [p for p in urlsplit(uri).path.split("/") if p]


def find_mirror(name: str, apt_dir: Path = APT_DIR) -> str | None:
    """The URI serving archive *name*, without a trailing slash, or None."""
    sources = apt_sources(apt_dir)
    for s in sources:
        if name in _components(s.uri):
            return s.uri.rstrip("/")
    security = name.endswith("-security")
    for s in sources:
        is_sec = any(x.endswith("-security") or x.endswith("/updates") for x in s.suites)
        if security and is_sec:
            return s.uri.rstrip("/")
        if not security and not is_sec and name == "debian" and \
                "debian-archive-keyring" in s.signed_by:
            return s.uri.rstrip("/")
    return None


def host_mirror(name: str, apt_dir: Path = APT_DIR) -> str:
    """Like :func:`find_mirror`, but a missing mirror is a TemplateError."""
    url = find_mirror(name, apt_dir)
    if url is None:
        env = "VZPKG_MIRROR_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()
        raise TemplateError(
            f"host_mirror({name!r}): no apt source for the {name!r} archive in "
            f"{apt_dir}/sources.list or {apt_dir}/sources.list.d/",
            hint=f"set the mirror with --set mirrors.{name.replace('-', '_')}=URL, the "
                 f"environment variable {env}=URL, or '{name.replace('-', '_')}: URL' "
                 f"in /etc/vzpkg/mirrors.yaml")
    return url
