"""The pull's HTTP client (vzpkg.mirror.http) against a raw server on 127.0.0.1 that
answers with exactly the bytes a test gives it: body framings other than
Content-Length, keep-alive connections the server drops, proxies, bad answers."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from vzpkg.mirror.http import Client, ClosedEarly, HttpError


class RawServer:
    """Answers the i-th request with replies[i] (then closes if close_after[i])."""

    def __init__(self, replies: list[bytes], close_after: set[int] | None = None) -> None:
        self.replies = replies
        self.close_after = close_after or set()
        self.requests: list[str] = []
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        n = 0
        while n < len(self.replies):
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn, conn.makefile("rb") as f:
                while n < len(self.replies):
                    head = b""
                    while not head.endswith(b"\r\n\r\n"):
                        line = f.readline()
                        if not line:
                            break
                        head += line
                    if not head:
                        break
                    self.requests.append(head.decode().split("\r\n")[0])
                    conn.sendall(self.replies[n])
                    n += 1
                    if n - 1 in self.close_after:
                        break

    def __enter__(self) -> RawServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
        self.thread.join(5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


@pytest.fixture
def client() -> Iterator[Client]:
    c = Client(2.0, 2.0, {"User-Agent": "test"})
    yield c
    c.close()


def body(c: Client, url: str) -> tuple[int, bytes]:
    with c.get(url) as r:
        return r.status_code, r.read()


def test_chunked_and_close_delimited_bodies(client: Client) -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n")
    plain = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
    until_close = b"HTTP/1.0 200 OK\r\n\r\nall of it"
    with RawServer([chunked, plain, until_close], close_after={2}) as srv:
        assert body(client, srv.url + "a") == (200, b"hello world")
        assert body(client, srv.url + "b") == (200, b"abc")
        assert body(client, srv.url + "c") == (200, b"all of it")
    assert srv.connections == 1                         # one kept-alive connection
    assert srv.requests == ["GET /a HTTP/1.1", "GET /b HTTP/1.1", "GET /c HTTP/1.1"]


def into(c: Client, url: str, size: int) -> bytes:
    """The body read with readinto1 through one reused buffer of *size* bytes."""
    buf = memoryview(bytearray(size))
    out = bytearray()
    with c.get(url) as r:
        while n := r.readinto1(buf):
            out += buf[:n]
        assert r.complete
    return bytes(out)


def test_downloads_read_each_framing_into_one_buffer(client: Client) -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    plain = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcEXTRA"
    until_close = b"HTTP/1.0 200 OK\r\n\r\nall of it"
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"
    with RawServer([chunked, plain], close_after={1}) as srv:
        assert into(client, srv.url + "a", 4) == b"hello world"
        assert into(client, srv.url + "b", 64) == b"abc"      # never past Content-Length
    with RawServer([until_close], close_after={0}) as srv:
        assert into(client, srv.url + "c", 2) == b"all of it"
    with RawServer([cut], close_after={0}) as srv, pytest.raises(ClosedEarly):
        into(client, srv.url + "d", 64)


def test_a_dropped_idle_connection_is_reopened(client: Client) -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    with RawServer([ok, ok], close_after={0}) as srv:   # closes after the first answer
        assert body(client, srv.url + "x") == (200, b"ok")
        assert body(client, srv.url + "y") == (200, b"ok")
    assert srv.connections == 2


def test_redirect_and_status_are_passed_on(client: Client) -> None:
    moved = b"HTTP/1.1 302 Found\r\nLocation: /new\r\nContent-Length: 0\r\n\r\n"
    missing = b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope"
    with RawServer([moved, missing]) as srv, client.get(srv.url + "old") as r:
        assert (r.status_code, r.reason, r.url) == (404, "Not Found", srv.url + "new")
        assert r.headers.get("content-length") == "4"


def test_a_cut_body_and_a_non_http_answer_are_errors(client: Client) -> None:
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this"
    with RawServer([cut], close_after={0}) as srv, client.get(srv.url) as r:
        assert r.read1(1000) == b"only this"
        with pytest.raises(ConnectionError, match="closed early"):
            r.read1(1000)
    with RawServer([b"SSH-2.0-OpenSSH\r\n\r\n"], close_after={0}) as srv, \
            pytest.raises(HttpError, match=r"not an HTTP/1\.x response"):
        client.get(srv.url)


def test_http_proxy_from_the_environment(client: Client,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    with RawServer([ok, ok]) as proxy:
        monkeypatch.setenv("http_proxy", f"127.0.0.1:{proxy.port}")
        monkeypatch.setenv("no_proxy", "skip.invalid")
        assert body(client, "http://mirror.invalid:8080/vz/index.json") == (200, b"ok")
        assert proxy.requests == ["GET http://mirror.invalid:8080/vz/index.json HTTP/1.1"]
        monkeypatch.setenv("http_proxy", "https://127.0.0.1:1")
        with pytest.raises(HttpError, match="only http:// proxies"):
            Client(1, 1, {}).get("http://other.invalid/")
