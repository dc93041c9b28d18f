"""Post-copy for ``vzmigrate --online --lazy``: CRIU's lazy pages.

At the source, ``criu dump --lazy-pages`` writes every image but the VE's memory, and
then serves that memory as a page server from the frozen processes (CRIU holds the
pages in pipes) on a socket it is given (``--ps-socket``).  At the destination a
``criu lazy-pages`` daemon reads the same socket: ``criu restore --lazy-pages`` hands
it a userfaultfd of every restored process, the processes run at once, and the
daemon fills each page when it is first touched, and all the others in the
background, until none is left.  Then the page server closes and the dump at the
source ends (its frozen processes are killed).

The socket between the two CRIUs is carried by the migration's own ssh connection
(the remote ``vzctl restore --page-stream`` relays its stdin and stdout to the
daemon's socket): no port is opened on any address.

The failure model (the post-copy trade-off): once the VE runs at the destination its
memory is in two places until the last page arrives.  If the stream breaks before
then, the VE at the destination cannot go on (a page it has not received is lost):
it is stopped there, and the source's frozen copy is stopped too (it is older than
what the destination already did).  The files stay at both ends.

userfaultfd: CRIU opens it inside each restored process, which is in the VE's user
namespace already; there the kernel allows a userfaultfd that also handles faults
the kernel takes on the process's behalf only when ``vm.unprivileged_userfaultfd`` is
1 (CAP_SYS_PTRACE counts only in the host's user namespace).  :func:`uffd_window`
sets it for the duration of CRIU's restore only, and puts the old value back; a
vzctl killed meanwhile leaves a record that the next vzctl acts on (:mod:`hostset`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

from vzpkg.runtime import hostset

UFFD_SYSCTL = Path("/proc/sys/vm/unprivileged_userfaultfd")
# what the remote vzctl restore --page-stream says on stderr once the VE runs there
RESTORED = "vzctl: page-stream: restored"
READY = "vzctl: page-stream: ready"
GO = b"go\n"


@contextlib.contextmanager
def uffd_window() -> Iterator[None]:
    """vm.unprivileged_userfaultfd=1 for the body (see the module's text), recorded
    first so that a vzctl killed inside the window does not leave it open: the next
    vzctl or vzmigrate closes it (:mod:`hostset`)."""
    try:
        held = hostset.hold("unprivileged_userfaultfd", UFFD_SYSCTL, "1",
                            lambda now: now != "0")
    except OSError:         # no record, no change: CRIU says what it misses
        held = False
    try:
        yield
    finally:
        if held:
            hostset.release("unprivileged_userfaultfd", UFFD_SYSCTL)


PIPE_MAX = Path("/proc/sys/fs/pipe-max-size")
PIPE_NEED = 4 << 20


def raise_pipe_max() -> bool:
    """CRIU's page server sizes its read pipe to 819 pages (3.2 MiB) and, if the
    kernel refuses, serves nothing (a splice to a descriptor it never opened: EBADF).
    Without CAP_SYS_RESOURCE (a container host, or a dump as the VE's owner) it refuses above
    fs.pipe-max-size (1 MiB by default): raised to 4 MiB for the page server's life,
    recorded first (:mod:`hostset`).  True if this process is to give it back with
    :func:`put_pipe_max`."""
    def enough(now: str) -> bool:
        return now.isdigit() and int(now) >= PIPE_NEED
    try:
        return hostset.hold("pipe-max-size", PIPE_MAX, str(PIPE_NEED), enough)
    except OSError:
        return False


def put_pipe_max(held: bool) -> None:
    if held:
        hostset.release("pipe-max-size", PIPE_MAX)


def read_status(fd: int) -> bool:
    """Wait for CRIU's ``--status-fd`` byte on *fd*, then close it: True once CRIU
    is ready, False if it ended first."""
    try:
        return os.read(fd, 1) == b"\0"
    finally:
        os.close(fd)


def _pump(src: int, dst: int, done: threading.Event) -> None:
    try:
        while True:
            data = os.read(src, 1 << 20)
            if not data:
                break
            view = memoryview(data)
            while view:
                n = os.write(dst, view)
                view = view[n:]
    except OSError:
        pass
    finally:
        done.set()


def relay(a_in: int, a_out: int, sock: socket.socket) -> threading.Event:
    """Copy *a_in* to *sock* and *sock* to *a_out* in two threads; the event is set
    when either direction ends (then *sock* is shut down, so that its reader sees
    the end)."""
    ended = threading.Event()
    fd = sock.fileno()

    def up() -> None:
        _pump(a_in, fd, ended)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def down() -> None:
        _pump(fd, a_out, ended)

    for f in (up, down):
        threading.Thread(target=f, daemon=True).start()
    return ended
