"""The few rtnetlink requests VE networking makes, sent from this process.

A start used to run ``ip -batch`` twice (the host end, then the VE end through
nsenter): two or three processes for work the kernel does in microseconds.  These
are the same requests ``ip`` sends (see rtnetlink(7)), each acknowledged and checked:
a veth pair with its peer created straight in the VE's network namespace, addresses,
link state and routes.  A :class:`Link` socket made while this thread is in a VE's
network namespace (:func:`in_netns`) keeps working on that namespace afterwards.

Every failure raises OSError with the kernel's errno and the request named.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from types import TracebackType

from vzpkg.runtime import libc

RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWADDR, RTM_DELADDR = 20, 21
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400

IFLA_IFNAME, IFLA_LINKINFO, IFLA_NET_NS_PID = 3, 18, 19
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFA_F_NODAD = 0x02
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5
RT_TABLE_MAIN, RTPROT_BOOT, RTN_UNICAST = 254, 3, 1
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_NOWHERE = 0, 253, 255
IFF_UP = 0x1

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Net = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def _attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def _ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, flags, change)


def _family(ip: IP) -> int:
    return socket.AF_INET if ip.version == 4 else socket.AF_INET6


@contextlib.contextmanager
def in_netns(pid: int | None) -> Iterator[None]:
    """Run the block with this thread in *pid*'s network namespace (None: stay).
    Only the network namespace changes: sockets made in the block belong to the
    VE's network, and processes started in it run there with everything else of
    the host's."""
    if pid is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        ve = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            libc.setns(ve, libc.CLONE_NEWNET)
        finally:
            os.close(ve)
        try:
            yield
        finally:
            libc.setns(own, libc.CLONE_NEWNET)
    finally:
        os.close(own)


class Link:
    """An rtnetlink socket in the network namespace of *pid* (None: the caller's)."""

    def __init__(self, pid: int | None = None) -> None:
        with in_netns(pid):
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                       socket.NETLINK_ROUTE)
            self._sock.bind((0, 0))
        self._pid = pid
        self._seq = 0

    def __enter__(self) -> Link:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._sock.close()

    def index(self, name: str) -> int:
        """The interface index of *name* in this socket's namespace."""
        with in_netns(self._pid):
            return socket.if_nametoindex(name)

    def _request(self, kind: int, flags: int, body: bytes, what: str) -> None:
        self._seq += 1
        head = struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_ACK | flags,
                           self._seq, 0)
        self._sock.send(head + body)
        while True:
            data = self._sock.recv(65536)
            off = 0
            while off + 16 <= len(data):
                size, mtype, _, seq, _ = struct.unpack_from("=IHHII", data, off)
                if mtype == NLMSG_ERROR and seq == self._seq:
                    err = -struct.unpack_from("=i", data, off + 16)[0]
                    if err:
                        raise OSError(err, f"{what}: {os.strerror(err)}")
                    return
                off += max(size + (-size % 4), 16)

    # -- links -------------------------------------------------------------------
    def add_veth(self, name: str, peer: str, peer_netns_pid: int, peer_index: int = 0) -> None:
        """A veth pair: *name* here, *peer* made straight in *peer_netns_pid*'s network
        (as interface number *peer_index* there, when given).  The request makes *peer*
        and names *name* its peer: the kernel takes a given number only for the end
        the request makes."""
        here = _ifinfo() + _attr(IFLA_IFNAME, name.encode() + b"\0")
        info = (_attr(IFLA_INFO_KIND, b"veth\0")
                + _attr(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, here)))
        body = (_ifinfo(peer_index) + _attr(IFLA_IFNAME, peer.encode() + b"\0")
                + _attr(IFLA_NET_NS_PID, struct.pack("=I", peer_netns_pid))
                + _attr(IFLA_LINKINFO, info))
        self._request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body, f"link add {name}")

    def delete_link(self, name: str) -> None:
        body = _ifinfo() + _attr(IFLA_IFNAME, name.encode() + b"\0")
        self._request(RTM_DELLINK, 0, body, f"link del {name}")

    def up(self, index: int) -> None:
        self._request(RTM_NEWLINK, 0, _ifinfo(index, IFF_UP, IFF_UP), f"link {index} up")

    # -- addresses -----------------------------------------------------------------
    def _addr(self, kind: int, flags: int, index: int, addr: Net, nodad: bool) -> None:
        ip = addr.ip
        body = (struct.pack("=BBBBI", _family(ip), addr.network.prefixlen,
                            IFA_F_NODAD if nodad else 0, RT_SCOPE_UNIVERSE, index)
                + _attr(IFA_LOCAL, ip.packed) + _attr(IFA_ADDRESS, ip.packed))
        verb = "add" if kind == RTM_NEWADDR else "del"
        self._request(kind, flags, body, f"addr {verb} {addr.with_prefixlen}")

    def add_addr(self, index: int, addr: Net, *, nodad: bool = False) -> None:
        self._addr(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, index, addr, nodad)

    def delete_addr(self, index: int, addr: Net) -> None:
        self._addr(RTM_DELADDR, 0, index, addr, False)

    # -- routes --------------------------------------------------------------------
    def _route(self, kind: int, flags: int, dst: IP, dst_len: int, index: int,
               gateway: IP | None) -> None:
        if kind == RTM_DELROUTE:
            proto, scope, rtype = 0, RT_SCOPE_NOWHERE, 0
        else:
            proto, rtype = RTPROT_BOOT, RTN_UNICAST
            scope = RT_SCOPE_LINK if gateway is None and dst.version == 4 else RT_SCOPE_UNIVERSE
        body = struct.pack("=BBBBBBBBI", _family(dst), dst_len, 0, 0, RT_TABLE_MAIN, proto,
                           scope, rtype, 0)
        if dst_len:
            body += _attr(RTA_DST, dst.packed)
        if gateway is not None:
            body += _attr(RTA_GATEWAY, gateway.packed)
        body += _attr(RTA_OIF, struct.pack("=i", index))
        verb = {RTM_NEWROUTE: "add", RTM_DELROUTE: "del"}[kind]
        self._request(kind, flags, body, f"route {verb} {dst}/{dst_len}")

    def replace_host_route(self, ip: IP, index: int) -> None:
        """``ip route replace IP/32 dev INDEX`` (or /128)."""
        self._route(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, ip, ip.max_prefixlen, index,
                    None)

    def delete_host_route(self, ip: IP, index: int) -> None:
        self._route(RTM_DELROUTE, 0, ip, ip.max_prefixlen, index, None)

    def add_route(self, dst: IP, dst_len: int, index: int, gateway: IP | None = None
                  ) -> None:
        self._route(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, dst, dst_len, index, gateway)
