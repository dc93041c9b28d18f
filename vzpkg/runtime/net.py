"""VE networking: a routed veth pair.

The host end is ``veth<CTID>.0`` (see VzPaths.host_ifname for roots other than
/vz; every function here takes that name as *hif*); the VE end is created straight inside the
VE's network namespace as ``eth0``.  Each VE address is put on ``eth0`` and a
host route for it points at the host end, so the host (and, with forwarding
on, the world) reaches the VE.  The host end carries the link-local gateway
addresses 169.254.0.1 and fe80::1 that the VE's default routes use.

What the VE may send is enforced on the host end: nftables (:mod:`vzpkg.runtime.
netfilter`) drops every packet whose source is not one of the VE's addresses and
every new connection to the host itself; IPv4 strict reverse-path filtering is a
second layer, and the host end accepts no router advertisements or redirects.  The
filter is in place before the veth pair exists and goes with it.

An address is a VE's only if it is safe to route to the VE (:func:`parse_ip`) and
no other VE or host interface has it (:func:`check_free`, :func:`setup`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from vzpkg.errors import ConfigError, UsageError, VeError
from vzpkg.runtime import netfilter

if TYPE_CHECKING:
    from vzpkg.runtime.paths import VzPaths

GW4 = "169.254.0.1"
GW6 = "fe80::1"
VE_IF = "eth0"

Addr = ipaddress.IPv4Interface | ipaddress.IPv6Interface


_HINT = ("give the VE a unicast address of its own, such as 10.0.0.101, 198.51.100.7 "
         "or fd00::101, optionally with /prefix")
_THIS_NET = ipaddress.ip_network("0.0.0.0/8")
_SITE_LOCAL = ipaddress.ip_network("fec0::/10")


def _unsafe(addr: Addr) -> str | None:
    """Why *addr* must not be a VE's address (each one gets a host route), or None."""
    ip = addr.ip
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return "an IPv4-mapped IPv6 address (use the IPv4 address itself)"
    if ip.is_unspecified or ip in _THIS_NET:
        return "the unspecified address ('this network'), which means every address"
    if ip.is_loopback:
        return "a loopback address: the host's own"
    if ip.is_link_local:
        return ("link-local: 169.254.0.0/16 and fe80::/10 belong to the link between "
                f"host and VE (the gateways {GW4} and {GW6} are there)")
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip == ipaddress.IPv4Address(
            "255.255.255.255"):
        return "the broadcast address"
    if ip.is_reserved or ip in _SITE_LOCAL:
        return "a reserved address"
    if addr.network.prefixlen < addr.max_prefixlen - 1:
        if ip == addr.network.network_address:
            return (f"the network address of {addr.network}, not an address in it "
                    "(its host part is zero)")
        if addr.version == 4 and ip == addr.network.broadcast_address:
            return f"the broadcast address of {addr.network}"
    return None


def parse_ip(text: str) -> Addr:
    """``10.1.2.3``, ``10.1.2.3/24`` or an IPv6 address; a host address by default.

    The prefix only tells the VE which addresses are on its link; the host always
    routes the single address (/32, /128) to the VE.  Addresses that would take
    something from the host or from the link (loopback, unspecified, link-local,
    multicast, broadcast, reserved, IPv4-mapped, a network's own address) are
    refused."""
    try:
        addr = ipaddress.ip_interface(text.strip())
    except ValueError:
        raise UsageError(f"invalid IP address {text!r}",
                         hint="use an IPv4 or IPv6 address such as 10.0.0.101 "
                              "or fd00::101, optionally with /prefix") from None
    if "/" not in text:
        addr = ipaddress.ip_interface(f"{addr.ip}/{addr.max_prefixlen}")
    why = _unsafe(addr)
    if why is not None:
        raise UsageError(f"IP address {text.strip()} cannot be a VE's address: it is {why}",
                         hint=_HINT)
    return addr


def check_free(paths: VzPaths, ctid: int, addrs: Iterable[Addr]) -> None:
    """Refuse an address that another VE of this VZ_ROOT already has (in its
    configuration, running or not): an address is never given to two VEs."""
    from vzpkg.runtime.config import VeConfig
    want = {a.ip: a for a in addrs}
    if not want:
        return
    for other in paths.ctids():
        if other == ctid:
            continue
        try:
            listed = (VeConfig.load(paths.conf(other)).get("IP_ADDRESS") or "").split()
        except ConfigError:
            continue
        for text in listed:
            with contextlib.suppress(ValueError):
                ip = ipaddress.ip_interface(text).ip
                if ip in want:
                    raise UsageError(f"IP address {ip} is already VE {other}'s address",
                                     hint=f"pick another address, or take it from VE "
                                          f"{other} first: vzctl set {other} --ipdel {ip} "
                                          "--save")


def _claimed(addrs: Iterable[Addr], hif: str) -> None:
    """Refuse, before any route is replaced, an address the host has on one of its
    own interfaces or routes to an interface other than *hif* (another VE's veth,
    perhaps of another VZ_ROOT): the VE would take the traffic of either."""
    for a in addrs:
        host = f"{a.ip}/{a.max_prefixlen}"
        r = subprocess.run(["ip", "-j", f"-{a.version}", "route", "show", "table", "all",
                            "exact", host], capture_output=True, text=True, check=False)
        try:
            routes = json.loads(r.stdout or "[]")
        except ValueError:
            routes = []
        for rt in routes:
            if rt.get("type") == "local":
                raise VeError(f"IP address {a.ip} is an address of this host "
                              f"({rt.get('dev', '?')}); a VE cannot have it",
                              hint="remove it from the VE: vzctl set CTID --ipdel "
                                   f"{a.ip} --save")
            dev = rt.get("dev")
            if dev and dev != hif and rt.get("type", "unicast") == "unicast":
                raise VeError(f"IP address {a.ip} is already routed to {dev} (another VE?)",
                              hint=f"an address is never given to two VEs; stop the VE "
                                   f"behind {dev} or take the address from it")


def _ip(args: list[str], batch: list[str], netns_pid: int | None = None) -> None:
    cmd = ["ip", *args, "-batch", "-"]
    if netns_pid is not None:
        cmd = ["nsenter", f"--net=/proc/{netns_pid}/ns/net", *cmd]
    r = subprocess.run(cmd, input="\n".join(batch) + "\n", capture_output=True, text=True,
                       check=False)
    if r.returncode != 0:
        raise VeError(f"network setup failed: {' '.join(cmd)}: {r.stderr.strip()}")


def link_exists(name: str) -> bool:
    """Whether the host has interface *name* (in the caller's network namespace)."""
    return os.path.exists(f"/sys/class/net/{name}")


def _host_route(addr: Addr, hif: str, verb: str) -> str:
    return f"route {verb} {addr.ip}/{addr.max_prefixlen} dev {hif}"


def _ve_addr(addr: Addr, verb: str) -> str:
    extra = " nodad" if addr.version == 6 and verb == "add" else ""
    return f"addr {verb} {addr.with_prefixlen} dev {VE_IF}{extra}"


def _host_end_sysctls(hif: str) -> None:
    """Strict reverse-path filtering for IPv4 (a second layer under the nftables
    source check); no router advertisements or redirects from the VE."""
    settings = {f"ipv4/conf/{hif}/rp_filter": "1",
                f"ipv4/conf/{hif}/accept_redirects": "0",
                f"ipv4/conf/{hif}/accept_source_route": "0",
                f"ipv6/conf/{hif}/accept_ra": "0",
                f"ipv6/conf/{hif}/accept_redirects": "0"}
    for key, value in settings.items():
        path = Path("/proc/sys/net") / key
        if key.startswith("ipv6/") and not path.parent.exists():
            continue  # IPv6 disabled on the host
        try:
            path.write_text(value)
        except OSError as exc:
            raise VeError(f"network setup failed: cannot set {path} to {value}: "
                          f"{exc.strerror}") from None


def setup(hif: str, pid: int, addrs: Iterable[Addr]) -> None:
    """Bring up lo, and the veth pair when the VE has addresses.

    The traffic filter comes first: if nftables cannot install it, the VE gets no
    network and this raises with nothing created.  Any later failure removes the
    pair and the filter again."""
    addrs = list(addrs)
    if not addrs:
        _ip([], ["link set lo up"], pid)
        return
    if link_exists(hif):  # left over from a VE whose namespace is still going away
        _ip([], [f"link del {hif}"])
    _claimed(addrs, hif)
    netfilter.allow(hif, addrs)
    try:
        # one batch; the host end's sysctls follow before the VE runs at all (its
        # init waits until this returns), so nothing can pass the pair before them
        _ip([], [f"link add {hif} type veth peer name {VE_IF} netns {pid}",
                 f"addr add {GW4}/32 dev {hif}",
                 f"addr add {GW6}/64 dev {hif} nodad",
                 f"link set {hif} up",
                 *(_host_route(a, hif, "replace") for a in addrs)])
        _host_end_sysctls(hif)
        _ip([], ["link set lo up", f"link set {VE_IF} up",
                 *(_ve_addr(a, "add") for a in addrs),
                 f"route add {GW4} dev {VE_IF} scope link",
                 f"route add default via {GW4} dev {VE_IF}",
                 f"route add ::/0 via {GW6} dev {VE_IF}"], pid)
    except BaseException:
        teardown(hif)
        raise


def add(hif: str, pid: int, addrs: Iterable[Addr], current: Iterable[Addr]) -> None:
    """Add addresses to a running VE (creating the veth pair for its first one)."""
    addrs = list(addrs)
    if not addrs:
        return
    if not link_exists(hif):
        setup(hif, pid, addrs)
        return
    have = {a.ip for a in current}
    new = [a for a in addrs if a.ip not in have]
    if not new:
        return
    _claimed(new, hif)
    netfilter.allow(hif, new)
    _ip([], [_host_route(a, hif, "replace") for a in new])
    _ip([], [_ve_addr(a, "add") for a in new], pid)


def delete(hif: str, pid: int, addrs: Iterable[Addr]) -> None:
    addrs = list(addrs)
    if not addrs or not link_exists(hif):
        return
    netfilter.forbid(hif, addrs)   # the VE stops sending from them at once
    _ip(["-force"], [_host_route(a, hif, "del") for a in addrs])
    _ip(["-force"], [_ve_addr(a, "del") for a in addrs], pid)


def teardown(hif: str) -> None:
    """Remove the host end (which removes the pair) and the VE's filter entries;
    fine if they are gone."""
    if link_exists(hif):
        subprocess.run(["ip", "link", "del", hif], capture_output=True, check=False)
    netfilter.forget(hif)
