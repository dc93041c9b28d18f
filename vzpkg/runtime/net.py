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
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from vzpkg.core.errors import IpInUseError, UsageError, VeError
from vzpkg.runtime import netfilter, rtnl

if TYPE_CHECKING:
    from vzpkg.runtime.paths import VzPaths

GW4 = "169.254.0.1"
GW6 = "fe80::1"
VE_IF = "eth0"
# the VE's end of its veth pair is this interface number in the VE: never one the
# host's own interfaces have (CRIU re-creates the pair from the host's network
# namespace, and a link the host already has under that number is "changed"
# instead, which a veth refuses: the restore failed with EOPNOTSUPP for eth0 = 2)
VE_IFINDEX = 0x7FFF0000

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
    configuration, running or not, even one with a bad line elsewhere): an address
    is never given to two VEs."""
    from vzpkg.runtime.config import lenient_values
    want = {a.ip: a for a in addrs}
    if not want:
        return
    for other in paths.ctids():
        if other == ctid:
            continue
        listed = (lenient_values(paths.conf(other)).get("IP_ADDRESS") or "").split()
        if paths.livefile(other).exists():      # and what a live set gave it
            listed += (lenient_values(paths.livefile(other)).get("IP_ADDRESS") or "").split()
        for text in listed:
            with contextlib.suppress(ValueError):
                ip = ipaddress.ip_interface(text).ip
                if ip in want:
                    raise IpInUseError(f"IP address {ip} is already VE {other}'s address",
                                       hint=f"pick another address, or take it from VE "
                                            f"{other} first: vzctl set {other} --ipdel {ip} "
                                            "--save")


_RTF_REJECT = 0x0200
_RTF_LOCAL = 0x80000000


def _host_routes() -> tuple[set[str], dict[str, str]]:
    """The host's local addresses, and its host routes (/32, /128) with their
    interface, read from /proc (the routing tables of the caller's network
    namespace; no ``ip`` process per address)."""
    local: set[str] = set()
    routed: dict[str, str] = {}
    with contextlib.suppress(OSError), open("/proc/net/fib_trie", encoding="ascii") as f:
        leaf = ""
        for line in f:
            text = line.strip()
            if text.startswith("|-- "):
                leaf = text[4:]
            elif text == "/32 host LOCAL" and leaf:
                local.add(leaf)
    with contextlib.suppress(OSError), open("/proc/net/route", encoding="ascii") as f:
        for line in list(f)[1:]:
            col = line.split()
            if len(col) >= 8 and col[7] == "FFFFFFFF" and not int(col[3], 16) & _RTF_REJECT:
                ip = ipaddress.IPv4Address(int(col[1], 16).to_bytes(4, "little"))
                routed[str(ip)] = col[0]
    with contextlib.suppress(OSError), open("/proc/net/ipv6_route", encoding="ascii") as f:
        for line in f:
            col = line.split()
            if len(col) < 10 or col[1] != "80":
                continue
            ip6 = str(ipaddress.IPv6Address(bytes.fromhex(col[0])))
            flags = int(col[8], 16)
            if flags & _RTF_LOCAL:
                local.add(ip6)
            elif not flags & _RTF_REJECT:
                routed.setdefault(ip6, col[9])
    return local, routed


def _claimed(addrs: Iterable[Addr], hif: str) -> None:
    """Refuse, before any route is replaced, an address the host has on one of its
    own interfaces or routes to an interface other than *hif* (another VE's veth,
    perhaps of another VZ_ROOT): the VE would take the traffic of either."""
    local, routed = _host_routes()
    for a in addrs:
        ip = str(a.ip)
        if ip in local:
            raise IpInUseError(f"IP address {a.ip} is an address of this host; a VE "
                               "cannot have it", hint="remove it from the VE: vzctl set "
                                                      f"CTID --ipdel {a.ip} --save")
        dev = routed.get(ip)
        if dev and dev != hif:
            raise IpInUseError(f"IP address {a.ip} is already routed to {dev} (another VE?)",
                               hint=f"an address is never given to two VEs; stop the VE "
                                    f"behind {dev} or take the address from it")


def _failed(exc: OSError) -> VeError:
    return VeError(f"network setup failed: {exc.strerror}")


def link_exists(name: str) -> bool:
    """Whether the host has interface *name* in the caller's network namespace (asked
    of the kernel: /sys shows the namespace it was mounted in, which a vzctl run in
    another network namespace, as the second host of the migration tests, does not
    share)."""
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


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


GW4_IP = ipaddress.IPv4Address(GW4)
GW6_IP = ipaddress.IPv6Address(GW6)


def setup(hif: str, pid: int, addrs: Iterable[Addr]) -> None:
    """Bring up lo, and the veth pair when the VE has addresses.

    The traffic filter comes first: if nftables cannot install it, the VE gets no
    network and this raises with nothing created.  Any later failure removes the
    pair and the filter again."""
    addrs = list(addrs)
    try:
        with rtnl.Link(pid) as ve:
            ve.up(1)        # lo is interface 1 of every new network namespace
            if not addrs:
                return
            if link_exists(hif):  # left over from a VE whose namespace is going away
                teardown(hif)
            _claimed(addrs, hif)
            netfilter.allow(hif, addrs)
            try:
                with rtnl.Link() as host:
                    host.add_veth(hif, VE_IF, pid, VE_IFINDEX)
                    _host_end(host, hif, addrs)
                # the host end's sysctls are set before the VE runs at all (its init
                # waits until this returns), so nothing can pass the pair before them
                _host_end_sysctls(hif)
                vidx = ve.index(VE_IF)
                ve.up(vidx)
                for a in addrs:
                    ve.add_addr(vidx, a, nodad=a.version == 6)
                ve.add_route(GW4_IP, 32, vidx)
                ve.add_route(ipaddress.IPv4Address(0), 0, vidx, GW4_IP)
                ve.add_route(ipaddress.IPv6Address(0), 0, vidx, GW6_IP)
            except BaseException:
                teardown(hif)
                raise
    except OSError as exc:
        raise _failed(exc) from None


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
    try:
        with rtnl.Link() as host:
            hidx = host.index(hif)
            for a in new:
                host.replace_host_route(a.ip, hidx)
        with rtnl.Link(pid) as ve:
            vidx = ve.index(VE_IF)
            for a in new:
                ve.add_addr(vidx, a, nodad=a.version == 6)
    except OSError as exc:
        raise _failed(exc) from None


def delete(hif: str, pid: int, addrs: Iterable[Addr]) -> None:
    addrs = list(addrs)
    if not addrs or not link_exists(hif):
        return
    netfilter.forbid(hif, addrs)   # the VE stops sending from them at once
    with rtnl.Link() as host:
        hidx = host.index(hif)
        for a in addrs:
            with contextlib.suppress(OSError):      # already gone
                host.delete_host_route(a.ip, hidx)
    with rtnl.Link(pid) as ve:
        vidx = ve.index(VE_IF)
        for a in addrs:
            with contextlib.suppress(OSError):
                ve.delete_addr(vidx, a)


def _host_end(host: rtnl.Link, hif: str, addrs: Iterable[Addr]) -> None:
    """The host end *hif*: the gateway addresses, up, a host route per VE address."""
    hidx = host.index(hif)
    host.add_addr(hidx, ipaddress.ip_interface(f"{GW4}/32"))
    host.add_addr(hidx, ipaddress.ip_interface(f"{GW6}/64"), nodad=True)
    host.up(hidx)
    for a in addrs:
        host.replace_host_route(a.ip, hidx)


def attach_restored(hif: str, addrs: Iterable[Addr]) -> None:
    """The host end of a VE that CRIU restored: the pair exists (CRIU made it, the
    host end down and bare, so nothing passes yet); the filter, the gateway
    addresses, the routes and the sysctls are set as :func:`setup` sets them, and
    only then does the link come up.  On failure the pair is removed."""
    addrs = list(addrs)
    try:
        _claimed(addrs, hif)
        netfilter.allow(hif, addrs)
        try:
            _host_end_sysctls(hif)
            with rtnl.Link() as host:
                _host_end(host, hif, addrs)
        except BaseException:
            teardown(hif)
            raise
    except OSError as exc:
        raise _failed(exc) from None


def teardown(hif: str) -> None:
    """Remove the host end (which removes the pair) and the VE's filter entries;
    fine if they are gone."""
    if link_exists(hif):
        with rtnl.Link() as host, contextlib.suppress(OSError):
            host.delete_link(hif)
    netfilter.forget(hif)
