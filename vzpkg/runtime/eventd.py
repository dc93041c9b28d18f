"""The host-wide event helper (OpenVZ's vzeventd): what a VE's init does when it ends.

``halt``/``poweroff`` inside a VE ends its init; ``reboot`` ends it too, and the
kernel tells the init's parent which one it was (a pid namespace's init that
calls reboot(2) is killed with SIGHUP for a restart and SIGINT for a halt or power
off).  So that someone is there to hear it without a process per VE, the inits of
a VZ_ROOT are children of one helper: ``vzctl start`` asks it to start the VE (it
forks a worker that runs the start, and the init the worker makes is handed to the
helper, a child subreaper, as soon as the namespaces' parent exits).  When an init
ends, the helper

* restarts the VE if it was a reboot;
* otherwise (halt, poweroff, a crash) stops it: unmounts, tears down its network
  and cgroup, removes its pid file, exactly as ``vzctl stop`` would;

and does nothing when ``vzctl stop`` is already doing that (it takes the VE's lock).
The helper starts on demand, one per VZ_ROOT, and exits once no VE of that root
runs.  It logs to ``/run/vzctl/[TAG/]eventd.log``.  ``VZCTL_EVENTD=no`` makes
``vzctl start`` start the VE itself (a halt then leaves it for the next vzctl
command to tidy up).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from vzpkg.core.errors import VeConfigError, VeError, VzError
from vzpkg.runtime import libc, state
from vzpkg.runtime.paths import VzPaths

STAGE = Path("/run/vzctl")
IDLE_EXIT = 5.0          # seconds without a running VE or a pending job before exiting
REPLY_TIMEOUT = 300.0
TIOCGPTPEER = 0x5441
BACKLOG = 64 << 10       # console output kept for the next vzctl console


def home(paths: VzPaths) -> Path:
    return STAGE / paths.tag if paths.tag else STAGE


def _socket_path(paths: VzPaths) -> Path:
    return home(paths) / "eventd.sock"


def enabled() -> bool:
    return os.environ.get("VZCTL_EVENTD", "yes") != "no"


# -- the client side (vzctl start) -------------------------------------------------

def start(paths: VzPaths, ctid: int) -> int:
    """Start VE *ctid* through the helper of *paths* (started if need be); its init's
    host pid.  Errors come back as the VeError the start raised."""
    sock = _connect(paths)
    try:
        sock.sendall(json.dumps({"op": "start", "ctid": ctid}).encode() + b"\n")
        sock.settimeout(REPLY_TIMEOUT)
        data = _read_line(sock)
    finally:
        sock.close()
    try:
        reply: dict[str, Any] = json.loads(data)
    except ValueError:
        raise VeError(f"VE {ctid}: the event helper gave no answer",
                      hint=f"see {home(paths) / 'eventd.log'}; or start with "
                           "VZCTL_EVENTD=no") from None
    if not reply.get("ok"):
        raise error_of(reply)
    return int(reply["pid"])


def reply_of(exc: VzError) -> dict[str, Any]:
    """What the helper answers for a start that failed with *exc*: enough for the
    client to raise the same error, with the same exit status (:func:`error_of`)."""
    reply: dict[str, Any] = {"ok": False, "error": exc.message, "hint": exc.hint,
                             "class": type(exc).__name__, "exit_code": exc.exit_code}
    if isinstance(exc, VeConfigError):
        reply["ctid"] = exc.ctid
    return reply


def error_of(reply: dict[str, Any]) -> VzError:
    """The error a helper's failure reply stands for: the class the start raised (one
    of :mod:`vzpkg.core.errors`, else VeError), its message, hint and exit status, so
    that ``vzctl start`` exits as it would without the helper."""
    from vzpkg.core import errors
    message, hint = str(reply.get("error")), reply.get("hint")
    hint = hint if isinstance(hint, str) else None
    cls = getattr(errors, str(reply.get("class")), None)
    exc: VzError
    if isinstance(cls, type) and issubclass(cls, VeConfigError):
        exc = cls(int(reply.get("ctid") or 0), message, hint=hint)
    elif isinstance(cls, type) and issubclass(cls, VzError) and cls is not errors.BuildError \
            and not issubclass(cls, errors.TemplateError | errors.UnsafeArchiveError):
        exc = cls(message, hint=hint)
    else:
        exc = VeError(message, hint=hint)
    code = reply.get("exit_code")
    if isinstance(code, int) and not isinstance(code, bool) and 0 < code < 256:
        exc.exit_code = code
    return exc


def console(paths: VzPaths, ctid: int, stdin: int = 0, stdout: int = 1) -> None:
    """Attach this terminal to VE *ctid*'s console until Esc . is typed (or the VE
    stops).  What the VE wrote while nobody watched comes first."""
    import termios
    import tty
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.connect(str(_socket_path(paths)))
    except OSError:
        s.close()
        raise VeError(f"VE {ctid} has no console: no VE of {paths.root} was started by "
                      "vzctl start here", hint=f"start it with vzctl start {ctid}") from None
    with s:
        s.sendall(json.dumps({"op": "console", "ctid": ctid}).encode() + b"\n")
        data, fds, _, _ = socket.recv_fds(s, 1 << 17, 1)
        head, _, rest = data.partition(b"\n")
        reply = json.loads(head or b"{}")
        if not reply.get("ok") or not fds:
            raise VeError(str(reply.get("error") or f"VE {ctid}: no console"),
                          hint=f"see vzctl status {ctid}")
        master = fds[0]
        want = int(reply.get("backlog", 0))
        while len(rest) < want:
            chunk = s.recv(want - len(rest))
            if not chunk:
                break
            rest += chunk
        os.write(stdout, rest)
        old = termios.tcgetattr(stdin) if os.isatty(stdin) else None
        if old is not None:
            tty.setraw(stdin, termios.TCSANOW)
            os.write(stdout, f"\r\n[attached to the console of VE {ctid}; "
                             "Esc . detaches]\r\n".encode())
        try:
            _relay_console(master, stdin, stdout)
        finally:
            if old is not None:
                termios.tcsetattr(stdin, termios.TCSAFLUSH, old)
            os.close(master)


def _relay_console(master: int, stdin: int, stdout: int) -> None:
    prev = b""
    while True:
        ready, _, _ = select.select([master, stdin], [], [])
        if master in ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                data = b""
            if not data:
                os.write(stdout, b"\r\n[the VE's console closed: the VE stopped]\r\n")
                return
            os.write(stdout, data)
        if stdin in ready:
            data = os.read(stdin, 4096)
            if not data:
                return
            for i, byte in enumerate(data):
                c = bytes([byte])
                if prev == b"\x1b" and c == b".":
                    os.write(master, data[:i])
                    return
                prev = c
            os.write(master, data)


def _read_line(sock: socket.socket) -> bytes:
    """Bytes up to and with the first newline (or until the other side closes)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _connect(paths: VzPaths) -> socket.socket:
    path = _socket_path(paths)
    spawned = False
    deadline = time.monotonic() + 10
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            s.connect(str(path))
            return s
        except OSError:
            s.close()
        if not spawned:
            _spawn(paths)
            spawned = True
        if time.monotonic() > deadline:
            raise VeError(f"the event helper for {paths.root} did not come up",
                          hint=f"see {home(paths) / 'eventd.log'}; or start with "
                               "VZCTL_EVENTD=no")
        time.sleep(0.01)


def _spawn(paths: VzPaths) -> None:
    h = home(paths)
    h.mkdir(mode=0o755, parents=True, exist_ok=True)
    log = os.open(h / "eventd.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                  0o644)
    try:
        subprocess.Popen([sys.executable, "-m", "vzpkg.runtime.eventd", str(paths.root)],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                         start_new_session=True, close_fds=True, cwd="/")
    finally:
        os.close(log)


# -- the helper ----------------------------------------------------------------------

class Helper:
    def __init__(self, paths: VzPaths) -> None:
        self.paths = paths
        self.jobs: dict[int, str] = {}       # worker pid -> what it does
        self.idle_since = time.monotonic()
        self.channels: dict[int, socket.socket] = {}   # fd -> a worker's way back
        self.masters: dict[int, int] = {}    # ctid -> its console's pty master
        self.peers: dict[int, int] = {}      # ctid -> the console's other end, held
        self.backlog: dict[int, bytearray] = {}   # ctid -> console output not yet seen
        self.attached: dict[int, socket.socket] = {}   # ctid -> vzctl console
        self.grace_at = 0.0                  # when soft disk limits were last looked at

    def log(self, text: str) -> None:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}", flush=True)

    def serve(self) -> None:
        h = home(self.paths)
        h.mkdir(mode=0o755, parents=True, exist_ok=True)
        lock = os.open(h / "eventd.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return                          # another helper serves this root
        libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 1)
        path = _socket_path(self.paths)
        path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        listener.bind(str(path))
        os.chmod(path, 0o600)
        listener.listen(64)
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.log(f"serving {self.paths.root}")
        try:
            while not self._idle():
                consoles = {fd: c for c, fd in self.masters.items() if c not in self.attached}
                waiting: list[Any] = [listener, wake_r, *self.channels, *consoles,
                                      *self.attached.values()]
                ready, _, _ = select.select(waiting, [], [], 1.0)
                if wake_r in ready:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 4096)
                if listener in ready:
                    conn, _ = listener.accept()
                    self._request(conn)
                for fd in ready:
                    if isinstance(fd, int) and fd in self.channels:
                        self._take_console(fd)
                    elif isinstance(fd, int) and fd in consoles:
                        self._drain(consoles[fd])
                for ctid, conn in list(self.attached.items()):
                    if conn in ready:
                        self._detach(ctid)
                self._reap()
                self._disk_grace()
        finally:
            path.unlink(missing_ok=True)
            listener.close()
            self.log("no VE running: exiting")

    def _disk_grace(self) -> None:
        """About every second: the soft disk limits of running VEs (diskgrace.grace_tick)."""
        now = time.monotonic()
        if now - self.grace_at < 1.0:
            return
        self.grace_at = now
        from vzpkg.runtime import diskgrace, diskimage
        for ctid in self.paths.ctids():
            if (not diskimage.has_image(self.paths, ctid)
                    or state.running_pid(self.paths.pidfile(ctid)) is None):
                continue
            try:
                note = diskgrace.grace_tick(self.paths, ctid, time.time())
            except Exception as exc:        # never into the loop: log and go on
                note = f"VE {ctid}: soft disk limit: {exc}"
            if note:
                self.log(note)

    def _idle(self) -> bool:
        busy = bool(self.jobs) or any(state.running_pid(self.paths.pidfile(c)) is not None
                                      for c in self.paths.ctids())
        now = time.monotonic()
        if busy:
            self.idle_since = now
        return now - self.idle_since > IDLE_EXIT

    def _request(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            line = _read_line(conn)
            req = json.loads(line)
            ctid, op = int(req["ctid"]), req.get("op")
            assert op in ("start", "console")
        except (OSError, ValueError, KeyError, AssertionError):
            conn.close()
            return
        if op == "console":
            self._attach(conn, ctid)
            return
        self._fork(f"start {ctid}", lambda chan: self._start(conn, chan, ctid))
        conn.close()

    def _fork(self, what: str, job: Any) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                ours.close()
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                job(theirs)
            except BaseException as exc:   # a worker reports, it never raises into the loop
                self.log(f"{what}: {exc}")
                code = 1
            os._exit(code)
        theirs.close()
        self.channels[ours.fileno()] = ours
        self.jobs[pid] = what

    def _start(self, conn: socket.socket, chan: socket.socket, ctid: int) -> None:
        from vzpkg.runtime.ve import Runtime
        try:
            pid, master = Runtime(self.paths).start_with_console(ctid)
            _hand_over(chan, ctid, master)
            reply: dict[str, Any] = {"ok": True, "pid": pid}
            self.log(f"VE {ctid} started, init pid {pid}")
        except VzError as exc:
            reply = reply_of(exc)
            self.log(f"VE {ctid} not started: {exc.message} (exit {exc.exit_code})")
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps(reply).encode() + b"\n")

    # -- consoles ------------------------------------------------------------------
    def _take_console(self, fd: int) -> None:
        """A worker's message: the console master of the VE it started (or EOF)."""
        chan = self.channels[fd]
        try:
            data, fds, _, _ = socket.recv_fds(chan, 64, 1)
        except OSError:
            data, fds = b"", []
        if not data:
            del self.channels[fd]
            chan.close()
            return
        ctid = int(data.decode())
        if fds:
            self._close_console(ctid)
            master = fds[0]
            os.set_blocking(master, False)
            # we hold the terminal's other end too: the VE's init opens /dev/console
            # only to write, and a master whose other end nobody holds reads EIO
            self.peers[ctid] = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
            self.masters[ctid] = master
            self.backlog[ctid] = bytearray()

    def _close_console(self, ctid: int) -> None:
        for fd in (self.masters.pop(ctid, None), self.peers.pop(ctid, None)):
            if fd is not None:
                os.close(fd)
        self.backlog.pop(ctid, None)

    def _drain(self, ctid: int) -> None:
        """Keep what the VE writes to its console (the last BACKLOG bytes), so that it
        never blocks on a console nobody watches."""
        master = self.masters[ctid]
        try:
            data = os.read(master, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_console(ctid)
            return
        buf = self.backlog.setdefault(ctid, bytearray())
        buf += data
        del buf[:-BACKLOG]

    def _attach(self, conn: socket.socket, ctid: int) -> None:
        master = self.masters.get(ctid)
        if master is None or ctid in self.attached:
            why = ("is attached to another vzctl console" if master is not None else
                   "has no console here (is it running? was it started by vzctl start?)")
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps({"ok": False, "error": f"VE {ctid} {why}"})
                             .encode() + b"\n")
            conn.close()
            return
        seen = bytes(self.backlog.get(ctid, b""))
        head = json.dumps({"ok": True, "backlog": len(seen)}).encode() + b"\n"
        try:
            conn.setblocking(True)
            socket.send_fds(conn, [head], [master])
            conn.sendall(seen)
        except OSError:
            conn.close()
            return
        self.backlog[ctid] = bytearray()
        self.attached[ctid] = conn

    def _detach(self, ctid: int) -> None:
        conn = self.attached.pop(ctid)
        with contextlib.suppress(OSError):
            while conn.recv(4096):
                pass
        conn.close()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.jobs.pop(pid, None) is not None:
                continue
            ctid = self._ve_of(pid)
            if ctid is None:
                continue
            self._close_console(ctid)
            if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGHUP:
                self.log(f"VE {ctid}: init rebooted the VE")
                self._fork(f"reboot {ctid}",
                           lambda ch, c=ctid, p=pid: self._after(c, p, ch, restart=True))
            else:
                how = (f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
                       else f"status {os.WEXITSTATUS(status)}")
                self.log(f"VE {ctid}: init ended ({how})")
                self._fork(f"halt {ctid}",
                           lambda ch, c=ctid, p=pid: self._after(c, p, ch, restart=False))

    def _ve_of(self, pid: int) -> int | None:
        """The VE whose pid file names *pid* (its init, just ended)."""
        for ctid in self.paths.ctids():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int(self.paths.pidfile(ctid).read_text().split()[0]) == pid:
                    return ctid
        return None

    def _after(self, ctid: int, pid: int, chan: socket.socket, *, restart: bool) -> None:
        """Tidy up after VE *ctid*'s init *pid* ended, unless vzctl stop did; restart
        the VE for a reboot."""
        from vzpkg.runtime.ve import Runtime
        rt = Runtime(self.paths)
        with rt.locked(ctid):
            try:
                recorded = int(self.paths.pidfile(ctid).read_text().split()[0])
            except (OSError, ValueError, IndexError):
                recorded = None
            if recorded != pid:
                return                      # vzctl stop (or a new start) got there first
            rt.cleanup(ctid)
            self.log(f"VE {ctid}: stopped and cleaned up")
        if restart:
            new, master = rt.start_with_console(ctid)
            _hand_over(chan, ctid, master)
            self.log(f"VE {ctid} restarted, init pid {new}")


def _hand_over(chan: socket.socket, ctid: int, master: int | None) -> None:
    """From a worker to the helper: VE *ctid*'s console master."""
    if master is None:
        return
    try:
        socket.send_fds(chan, [str(ctid).encode()], [master])
    finally:
        os.close(master)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m vzpkg.runtime.eventd VZ_ROOT", file=sys.stderr)
        return 2
    Helper(VzPaths(Path(argv[0]))).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
