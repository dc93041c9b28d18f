"""What a VE's configuration says about it, read from CTID.conf and never from the
VE's own files: its layout, its addresses and what its distribution is told at start."""

from __future__ import annotations

from vzpkg.core.errors import VeError
from vzpkg.runtime import dists, net
from vzpkg.runtime.config import VeConfig
from vzpkg.runtime.idmap import IdRange
from vzpkg.runtime.layout import Layout


def layout_of(cfg: VeConfig) -> Layout:
    """The VE's layout, from its configuration (never from its files)."""
    try:
        return Layout(cfg.get("VE_LAYOUT") or "plain")
    except ValueError:
        raise VeError(f"{cfg.path}: VE_LAYOUT={cfg.get('VE_LAYOUT')!r} is not plain or "
                      "overlay") from None


def addrs_of(cfg: VeConfig) -> list[net.Addr]:
    return [net.parse_ip(a) for a in (cfg.get("IP_ADDRESS") or "").split()]


def dist_setup(cfg: VeConfig) -> dists.DistSetup:
    return dists.DistSetup(
        hostname=cfg.get("HOSTNAME") or None,
        addrs=tuple(a.with_prefixlen for a in addrs_of(cfg)),
        nameservers=tuple((cfg.get("NAMESERVER") or "").split()),
        searchdomain=cfg.get("SEARCHDOMAIN") or None)


def ids_of(cfg: VeConfig) -> IdRange | None:
    """The host ids of a user-namespaced VE; None for a VE in the old mode (host
    root, reduced capabilities: ``VE_USERNS=no``, or a VE made before ranges)."""
    if (cfg.get("VE_USERNS") or "yes") == "no":
        return None
    text = cfg.get("VE_IDMAP")
    if not text:
        return None
    return IdRange.parse(text, where=f"{cfg.path}: VE_IDMAP")
