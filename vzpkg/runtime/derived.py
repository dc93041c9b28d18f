"""What a VE's configuration says about it, read from CTID.conf and never from the
VE's own files: its layout, its addresses and what its distribution is told at start."""

from __future__ import annotations

import contextlib
import ipaddress
from pathlib import Path

from vzpkg.core.errors import VeError
from vzpkg.runtime import dists, net
from vzpkg.runtime.config import VeConfig
from vzpkg.runtime.idmap import IdRange
from vzpkg.runtime.layout import Layout
from vzpkg.runtime.params import INHERIT, ParamError, check_hostname


def layout_of(cfg: VeConfig) -> Layout:
    """The VE's layout, from its configuration (never from its files)."""
    try:
        return Layout(cfg.get("VE_LAYOUT") or "plain")
    except ValueError:
        raise VeError(f"{cfg.path}: VE_LAYOUT={cfg.get('VE_LAYOUT')!r} is not plain or "
                      "overlay") from None


def addrs_of(cfg: VeConfig) -> list[net.Addr]:
    return [net.parse_ip(a) for a in (cfg.get("IP_ADDRESS") or "").split()]


def dist_setup(cfg: VeConfig, host_resolv: tuple[Path, ...] | None = None
               ) -> dists.DistSetup:
    """What the VE's distribution is told; ``inherit`` DNS values are the host's, from
    *host_resolv* (default :data:`HOST_RESOLV`)."""
    servers = (cfg.get("NAMESERVER") or "").split()
    search = (cfg.get("SEARCHDOMAIN") or "").split()
    if INHERIT in servers or INHERIT in search:
        host_servers, host_search = host_dns(host_resolv or HOST_RESOLV)
        servers = _inherited(servers, host_servers)
        search = _inherited(search, host_search)
    return dists.DistSetup(
        hostname=cfg.get("HOSTNAME") or None,
        addrs=tuple(a.with_prefixlen for a in addrs_of(cfg)),
        nameservers=tuple(servers),
        searchdomain=" ".join(search) or None)


HOST_RESOLV = (Path("/etc/resolv.conf"), Path("/run/systemd/resolve/resolv.conf"))


def host_dns(files: tuple[Path, ...] = HOST_RESOLV) -> tuple[list[str], list[str]]:
    """The host's name servers and search domains, for ``inherit`` (OpenVZ's
    NAMESERVER="inherit"): read from the host's /etc/resolv.conf, a host file, as host
    root.  Loopback servers (a resolver on the host itself, which a VE does not
    reach) are left out; when that leaves none, systemd-resolved's list of the
    upstream servers is read instead."""
    servers: list[str] = []
    search: list[str] = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        servers, search = [], []
        for line in text.splitlines():
            words = line.split("#", 1)[0].split(";", 1)[0].split()
            if len(words) >= 2 and words[0] == "nameserver":
                with contextlib.suppress(ValueError):
                    ip = ipaddress.ip_address(words[1].split("%", 1)[0])
                    if not ip.is_loopback and str(ip) not in servers:
                        servers.append(str(ip))
            elif len(words) >= 2 and words[0] in ("search", "domain"):
                search = [w for w in words[1:] if _domain(w)]   # the last line wins
        if servers:
            break
    return servers, search


def _domain(text: str) -> bool:
    try:
        check_hostname(text)
    except ParamError:
        return False
    return True


def _inherited(items: list[str], host: list[str]) -> list[str]:
    """*items* with ``inherit`` replaced by the host's *host* values."""
    out: list[str] = []
    for item in items:
        for v in host if item == INHERIT else [item]:
            if v not in out:
                out.append(v)
    return out


def ids_of(cfg: VeConfig) -> IdRange | None:
    """The host ids of a user-namespaced VE; None for a VE in the old mode (host
    root, reduced capabilities: ``VE_USERNS=no``, or a VE made before ranges)."""
    if (cfg.get("VE_USERNS") or "yes") == "no":
        return None
    text = cfg.get("VE_IDMAP")
    if not text:
        return None
    return IdRange.parse(text, where=f"{cfg.path}: VE_IDMAP")


def shifted(cfg: VeConfig) -> bool:
    """Whether the VE's files were shifted to its ids on disk at create
    (``VE_IDMAP_MODE="shift"``): its root is then a plain bind mount."""
    return ids_of(cfg) is not None and (cfg.get("VE_IDMAP_MODE") or "") == "shift"


def mount_ids_of(cfg: VeConfig) -> IdRange | None:
    """The ids the VE's root is idmapped to when mounted: its range, unless its
    files already carry it (a shifted VE) or it has none (the old mode)."""
    return None if shifted(cfg) else ids_of(cfg)
