"""A door from a network namespace to the host's package proxy, and nothing else.

:class:`ProxyDoor` listens on 127.0.0.1 inside a network namespace (a running
VE's, or the fresh one a stopped VE's command gets) and relays each connection
to the package proxy on the host's loopback.  The socket is made by this (host)
process from a thread that enters the namespace for the bind only; no process
of ours runs in the VE, and the VE gains no route anywhere: a VE without a
route to the outside reaches the proxy, and only the proxy, which fetches only
from the repositories the host's templates name (``CachingProxy.allow``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import struct
import threading

from vzpkg.build.sandbox import relay
from vzpkg.runtime import libc

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def _in_netns(netns: int, fn: object) -> object:
    """Run *fn* in a thread that has entered network namespace *netns*."""
    out: list[object] = []
    err: list[BaseException] = []

    def run() -> None:
        try:
            libc.setns(netns, libc.CLONE_NEWNET)
            out.append(fn())            # type: ignore[operator]
        except BaseException as exc:    # re-raised in the caller
            err.append(exc)
    t = threading.Thread(target=run, name="vzpkg-door")
    t.start()
    t.join()        # the thread ends: its namespace goes with it
    if err:
        raise err[0]
    return out[0]


def _lo_up_and_listen(port: int) -> socket.socket:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sH22x", b"lo", 0))
        flags = struct.unpack("16sH22x", ifr)[1]
        if not flags & IFF_UP:
            fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", port))
    except OSError:
        listener.bind(("127.0.0.1", 0))     # the VE uses that port itself: another
    listener.listen(64)
    return listener


class ProxyDoor:
    """127.0.0.1:``port`` inside the namespace of *netns* (a descriptor) reaches
    127.0.0.1:*host_port* of the host, until :meth:`close`.  Loopback is brought
    up if it is down (a stopped VE's fresh namespace)."""

    def __init__(self, netns: int, host_port: int) -> None:
        self.host_port = host_port
        listener = _in_netns(netns, lambda: _lo_up_and_listen(host_port))
        assert isinstance(listener, socket.socket)
        self._listener = listener
        self.port = int(listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True, name="vzpkg-door").start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return                      # closed
            threading.Thread(target=relay, args=(conn, self.host_port), daemon=True,
                             name="vzpkg-relay").start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()


def open_door(pid: int, host_port: int) -> ProxyDoor:
    """A door into the network namespace of host process *pid*."""
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return ProxyDoor(fd, host_port)
    finally:
        os.close(fd)
