"""VE networking: a routed veth pair.

The host end is ``veth<CTID>.0`` (see VzPaths.host_ifname for roots other than
/vz; every function here takes that name as *hif*); the VE end is created straight inside the
VE's network namespace as ``eth0``.  Each VE address is put on ``eth0`` and a
host route for it points at the host end, so the host (and, with forwarding
on, the world) reaches the VE.  The host end carries the link-local gateway
addresses 169.254.0.1 and fe80::1 that the VE's default routes use.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from collections.abc import Iterable

from vzpkg.errors import UsageError, VeError

GW4 = "169.254.0.1"
GW6 = "fe80::1"
VE_IF = "eth0"

Addr = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def parse_ip(text: str) -> Addr:
    """``10.1.2.3``, ``10.1.2.3/24`` or an IPv6 address; a host address by default."""
    try:
        addr = ipaddress.ip_interface(text.strip())
    except ValueError:
        raise UsageError(f"invalid IP address {text!r}",
                         hint="use an IPv4 or IPv6 address such as 10.0.0.101 "
                              "or fd00::101, optionally with /prefix") from None
    if "/" not in text:
        addr = ipaddress.ip_interface(f"{addr.ip}/{addr.max_prefixlen}")
    return addr


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


def setup(hif: str, pid: int, addrs: Iterable[Addr]) -> None:
    """Bring up lo, and the veth pair when the VE has addresses."""
    addrs = list(addrs)
    if not addrs:
        _ip([], ["link set lo up"], pid)
        return
    if link_exists(hif):  # left over from a VE whose namespace is still going away
        _ip([], [f"link del {hif}"])
    _ip([], [f"link add {hif} type veth peer name {VE_IF} netns {pid}",
             f"addr add {GW4}/32 dev {hif}",
             f"addr add {GW6}/64 dev {hif} nodad",
             f"link set {hif} up",
             *(_host_route(a, hif, "replace") for a in addrs)])
    _ip([], ["link set lo up", f"link set {VE_IF} up",
             *(_ve_addr(a, "add") for a in addrs),
             f"route add {GW4} dev {VE_IF} scope link",
             f"route add default via {GW4} dev {VE_IF}",
             f"route add ::/0 via {GW6} dev {VE_IF}"], pid)


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
    _ip([], [_host_route(a, hif, "replace") for a in new])
    _ip([], [_ve_addr(a, "add") for a in new], pid)


def delete(hif: str, pid: int, addrs: Iterable[Addr]) -> None:
    addrs = list(addrs)
    if not addrs or not link_exists(hif):
        return
    _ip(["-force"], [_host_route(a, hif, "del") for a in addrs])
    _ip(["-force"], [_ve_addr(a, "del") for a in addrs], pid)


def teardown(hif: str) -> None:
    """Remove the host end (which removes the pair); fine if it is gone."""
    if link_exists(hif):
        subprocess.run(["ip", "link", "del", hif], capture_output=True, check=False)
