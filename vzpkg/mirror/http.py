"""A small HTTP/1.1 GET client on plain sockets (``ssl`` for https).

What a pull needs and no more: keep-alive connections per host, separate
connect and read timeouts, bodies framed by Content-Length, chunked encoding
or the end of the connection, redirects (to http or https; every byte is
checked against the signed index wherever it came from), ``http_proxy`` /
``https_proxy`` / ``no_proxy`` from the environment (http:// proxies; https
through CONNECT), and ``read1`` so a cut loses nothing already received.

Why not a library: ``requests`` (urllib3, charset_normalizer, idna) took a
command-line pull a third of its time to import, and ``http.client`` parses
headers with the ``email`` package, the biggest import left.  This module
imports nothing beyond ``socket``.
"""

from __future__ import annotations

import os
import socket
from types import TracebackType
from typing import Protocol, cast, overload
from urllib.parse import urljoin, urlsplit

from vzpkg.core.errors import MirrorError

MAX_REDIRECTS = 10
REDIRECTS = (301, 302, 303, 307, 308)
MAX_LINE = 65536
MAX_HEADERS = 200
BUFFER = 1 << 16


class _Reader(Protocol):
    def readline(self, size: int = -1, /) -> bytes: ...
    def read1(self, size: int = -1, /) -> bytes: ...
    def readinto1(self, buffer: memoryview, /) -> int: ...
    def close(self) -> None: ...


class HttpError(MirrorError):
    """A request failed before a response arrived (connect, TLS, timeout)."""


class ClosedEarly(ConnectionError):
    """The server closed the connection before the end of the body."""

    def __init__(self, missing: int | None = None) -> None:
        left = f" ({missing} bytes missing)" if missing else ""
        super().__init__(f"connection closed early by the server{left}")


class ProtocolError(ConnectionError):
    """The server's answer is not HTTP/1.x as this client reads it."""


class Headers:
    """Response headers, looked up without regard to case."""

    def __init__(self) -> None:
        self._d: dict[str, str] = {}

    def add(self, name: str, value: str) -> None:
        key = name.strip().lower()
        self._d[key] = f"{self._d[key]}, {value}" if key in self._d else value

    @overload
    def get(self, name: str) -> str | None: ...
    @overload
    def get(self, name: str, default: str) -> str: ...

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._d.get(name.lower(), default)

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._d


class _Conn:
    """One TCP (or TLS) connection to a server or through a proxy."""

    def __init__(self, host: str, port: int, *, tls: bool, tls_host: str,
                 tunnel: str | None, connect_timeout: float, read_timeout: float) -> None:
        self.host, self.port, self.tls, self.tls_host = host, port, tls, tls_host
        self.tunnel = tunnel
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.sock: socket.socket | None = None
        self.rfile: _Reader | None = None

    def connect(self) -> None:
        # an ASCII host goes to getaddrinfo as bytes: a str would import the IDNA codec
        host: str | bytes = self.host.encode() if self.host.isascii() else self.host
        sock = socket.create_connection((host, self.port),  # type: ignore[arg-type]
                                        timeout=self.connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tunnel is not None:
                sock.sendall(f"CONNECT {self.tunnel} HTTP/1.1\r\nHost: {self.tunnel}\r\n\r\n"
                             .encode("latin-1"))
                rf = cast(_Reader, sock.makefile("rb"))
                try:
                    status, _, _ = _status_line(rf)
                    while _header_line(rf) is not None:
                        pass
                finally:
                    rf.close()
                if status != 200:
                    raise ProtocolError(f"the proxy refused CONNECT {self.tunnel}: "
                                        f"HTTP {status}")
            if self.tls:
                import ssl
                ctx = ssl.create_default_context()
                sock = ctx.wrap_socket(sock, server_hostname=self.tls_host)
            sock.settimeout(self.read_timeout)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.rfile = cast(_Reader, sock.makefile("rb", buffering=BUFFER))

    def close(self) -> None:
        if self.rfile is not None:
            self.rfile.close()
            self.rfile = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _status_line(rf: _Reader) -> tuple[int, str, str]:
    line = rf.readline(MAX_LINE + 1)
    if not line:
        raise ClosedEarly()
    if len(line) > MAX_LINE:
        raise ProtocolError("status line too long")
    parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"not an HTTP/1.x response: {line[:80]!r}")
    return int(parts[1]), parts[2] if len(parts) > 2 else "", parts[0]


def _header_line(rf: _Reader) -> tuple[str, str] | None:
    line = rf.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise ProtocolError("header line too long")
    if not line:
        raise ClosedEarly()
    if line in (b"\r\n", b"\n"):
        return None
    name, sep, value = line.decode("latin-1").partition(":")
    if not sep:
        raise ProtocolError(f"malformed header line {line[:80]!r}")
    return name, value.strip()


class Response:
    """One response; read the body with read1(), then close() (or ``with``)."""

    def __init__(self, conn: _Conn, url: str, *, head: bool = False) -> None:
        assert conn.rfile is not None
        self._conn = conn
        self._rf = conn.rfile
        self.url = url
        while True:
            self.status_code, self.reason, version = _status_line(self._rf)
            self.headers = Headers()
            for _ in range(MAX_HEADERS):
                h = _header_line(self._rf)
                if h is None:
                    break
                self.headers.add(*h)
            else:
                raise ProtocolError("too many header lines")
            if not 100 <= self.status_code < 200:
                break
        conn_hdr = (self.headers.get("Connection") or "").lower()
        self._keep = version == "HTTP/1.1" and "close" not in conn_hdr
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        self._chunked = "chunked" in te
        self._chunk_left = 0
        self._done = False
        length = self.headers.get("Content-Length")
        self.length: int | None = None
        if head or self.status_code in (204, 304):
            self.length = 0
        elif not self._chunked and length is not None:
            try:
                self.length = int(length)
            except ValueError:
                raise ProtocolError(f"bad Content-Length {length!r}") from None
        elif not self._chunked:
            self._keep = False                 # the body ends when the connection does
        if self.length == 0:
            self._done = True

    def read1(self, n: int) -> bytes:
        """What has arrived, at most *n* bytes; b"" at the end of the body.
        OSError (TimeoutError, ClosedEarly, ...) when the transfer fails."""
        if self._done or n <= 0:
            return b""
        if self._chunked:
            return self._read_chunked(n)
        want = n if self.length is None else min(n, self.length)
        data = self._rf.read1(want)
        self._got(len(data))
        return bytes(data)

    def readinto1(self, buf: memoryview) -> int:
        """read1() into *buf* (a download reuses one buffer: no allocation, no new
        pages per chunk): the number of bytes put at its start, 0 at the end of the
        body.  OSError as for read1()."""
        if self._done or not len(buf):
            return 0
        if self._chunked:
            data = self._read_chunked(len(buf))
            buf[:len(data)] = data
            return len(data)
        if self.length is not None and len(buf) > self.length:
            buf = buf[:self.length]
        n = self._rf.readinto1(buf)
        self._got(n)
        return n

    def _got(self, n: int) -> None:
        """*n* bytes of a body framed by Content-Length or by the connection's end
        were read (0: the connection ended)."""
        if not n:
            if self.length is None:
                self._done = True
                return
            raise ClosedEarly(self.length)
        if self.length is not None:
            self.length -= n
            if self.length == 0:
                self._done = True

    def _read_chunked(self, n: int) -> bytes:
        if self._chunk_left == 0:
            line = self._rf.readline(MAX_LINE + 1)
            if not line:
                raise ClosedEarly()
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size line {line[:40]!r}") from None
            if size == 0:
                while _header_line(self._rf) is not None:     # trailers
                    pass
                self._done = True
                return b""
            self._chunk_left = size
        data = self._rf.read1(min(n, self._chunk_left))
        if not data:
            raise ClosedEarly(self._chunk_left)
        self._chunk_left -= len(data)
        if self._chunk_left == 0 and self._rf.readline(MAX_LINE) not in (b"\r\n", b"\n"):
            raise ProtocolError("chunk not followed by CRLF")
        return bytes(data)

    def read(self) -> bytes:
        out = bytearray()
        while chunk := self.read1(BUFFER):
            out += chunk
        return bytes(out)

    @property
    def complete(self) -> bool:
        return self._done

    def close(self) -> None:
        """Done: the connection is kept for the next request only if the whole
        body was read (else unread bytes would be taken for the next response)."""
        if not (self._done and self._keep):
            self._conn.close()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _proxy_for(scheme: str, host: str) -> str | None:
    env = os.environ
    proxy = env.get(f"{scheme}_proxy") or env.get(f"{scheme.upper()}_PROXY")
    if not proxy:
        return None
    no = env.get("no_proxy") or env.get("NO_PROXY") or ""
    for item in (x.strip().lstrip(".") for x in no.split(",")):
        if item == "*" or (item and (host == item or host.endswith("." + item))):
            return None
    return proxy if "://" in proxy else f"http://{proxy}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (ClosedEarly, ProtocolError)):
        return str(exc)
    from vzpkg.core.neterrors import describe
    return describe(exc)


class Client:
    """GET requests with per-host keep-alive connections."""

    def __init__(self, connect_timeout: float, read_timeout: float,
                 headers: dict[str, str]) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.headers = headers
        self._conns: dict[tuple[str, str, int, str | None], _Conn] = {}

    def close(self) -> None:
        for c in self._conns.values():
            c.close()
        self._conns.clear()

    def _connection(self, scheme: str, host: str, port: int) -> tuple[_Conn, bool]:
        """The connection for a URL, and whether requests name the full URL."""
        proxy = _proxy_for(scheme, host)
        key = (scheme, host, port, proxy)
        absolute = proxy is not None and scheme == "http"
        conn = self._conns.get(key)
        if conn is None:
            tls = scheme == "https"
            if proxy is None:
                conn = _Conn(host, port, tls=tls, tls_host=host, tunnel=None,
                             connect_timeout=self.connect_timeout,
                             read_timeout=self.read_timeout)
            else:
                p = urlsplit(proxy)
                if p.scheme != "http" or not p.hostname:
                    raise HttpError(f"proxy {proxy!r}: only http:// proxies are supported",
                                    hint="set http_proxy / https_proxy to http://HOST:PORT")
                target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                conn = _Conn(p.hostname, p.port or 80, tls=tls, tls_host=host,
                             tunnel=target if tls else None,
                             connect_timeout=self.connect_timeout,
                             read_timeout=self.read_timeout)
            self._conns[key] = conn
        return conn, absolute

    def _once(self, url: str, headers: dict[str, str]) -> Response:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise HttpError(f"{url}: not an http:// or https:// URL")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = parts.netloc.rpartition("@")[2]
        for attempt in (1, 2):
            conn, absolute = self._connection(parts.scheme, parts.hostname, port)
            reused = conn.sock is not None
            try:
                if not reused:
                    conn.connect()
                assert conn.sock is not None
                lines = [f"GET {url if absolute else target} HTTP/1.1", f"Host: {host_header}",
                         *(f"{k}: {v}" for k, v in {**self.headers, **headers}.items())]
                conn.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
                return Response(conn, url)
            except (ClosedEarly, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                if reused and attempt == 1:      # the server dropped an idle connection
                    continue
                raise HttpError(f"{url}: cannot connect: {_describe(exc)}",
                                hint="check the mirror URL and that the server is up"
                                ) from None
            except TimeoutError:
                conn.close()
                raise HttpError(f"{url}: timed out after {self.connect_timeout:g}s "
                                f"connect / {self.read_timeout:g}s read",
                                hint="the mirror is down or stalled; raise pull.timeout if "
                                     "it is just slow") from None
            except OSError as exc:
                conn.close()
                raise HttpError(f"{url}: cannot connect: {_describe(exc)}",
                                hint="check the mirror URL and that the server is up"
                                ) from None
        raise AssertionError("unreachable")

    def get(self, url: str, headers: dict[str, str] | None = None) -> Response:
        """GET *url*, following redirects; the final response (any status)."""
        for _ in range(MAX_REDIRECTS + 1):
            r = self._once(url, headers or {})
            location = r.headers.get("Location")
            if r.status_code not in REDIRECTS or not location:
                return r
            try:
                if r.length is not None and r.length <= BUFFER:
                    r.read()                 # a small body: the connection is kept
            except OSError:
                pass
            r.close()
            url = urljoin(url, location)
        raise HttpError(f"{url}: more than {MAX_REDIRECTS} redirects",
                        hint="the mirror's redirects loop; check its URL")
