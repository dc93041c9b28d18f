"""HTTP for pulls: small files into memory, big files to a resumable .part file.

Every request carries connect and read timeouts, so a mirror that stalls
fails instead of hanging and the next mirror is tried.  A download resumes
with ``Range: bytes=N-`` from what an earlier, interrupted attempt left in
its ``.part`` file; a server that ignores the range (200) restarts it from
zero, one that rejects it (416) gets one clean retry.  The sha256 is computed
while the bytes arrive, so no second pass over the file is needed.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections import deque
from pathlib import Path
from typing import NamedTuple, Protocol

from vzpkg import __version__
from vzpkg.core.errors import MirrorError
from vzpkg.mirror.flush import Flusher
from vzpkg.mirror.http import Client, HttpError, Response


def describe(exc: BaseException) -> str:
    from vzpkg.core.neterrors import describe as _describe
    return _describe(exc)

CHUNK = 1 << 20
SMALL_LIMIT = 16 << 20
CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


class Progress(Protocol):
    """What a pull reports while it works (see vzpkg.mirror.progress)."""

    def start(self, name: str, total: int, done: int, source: str) -> None: ...
    def update(self, done: int) -> None: ...
    def finish(self, ok: bool) -> None: ...
    def note(self, message: str) -> None: ...


class Sink(Protocol):
    """Something that sees the downloaded bytes as they land (a signature check)."""

    def restart(self) -> None: ...
    def feed(self, fd: int, upto: int, *, wait: bool = False) -> None: ...


class NoSink:
    def restart(self) -> None:
        pass

    def feed(self, fd: int, upto: int, *, wait: bool = False) -> None:
        pass


class NoProgress:
    def start(self, name: str, total: int, done: int, source: str) -> None:
        pass

    def update(self, done: int) -> None:
        pass

    def finish(self, ok: bool) -> None:
        pass

    def note(self, message: str) -> None:
        pass


class FetchError(MirrorError):
    """One request to one mirror failed.

    ``partial`` is set when some bytes arrived and the ``.part`` file is worth
    resuming; ``corrupt`` when what arrived cannot be right and must go.
    """

    def __init__(self, message: str, *, partial: bool = False, corrupt: bool = False,
                 fetched: int = 0, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.partial = partial
        self.corrupt = corrupt
        self.fetched = fetched


class Download(NamedTuple):
    """What a download left in its .part file."""

    sha256: str
    size: int
    fetched: int        # bytes received in this call
    resumed_from: int   # bytes already in the .part file that were kept
    state: hashlib._Hash  # the sha256 of every byte, not finalized (signature checks)


class HashThread:
    """Feeds a hash the chunks handed to it, on a thread of its own, in order.

    hashlib lets go of the GIL while it hashes a large buffer, so the hash of one
    chunk runs on one core while the next is received and written on the other.
    The chunks are a small ring of buffers: :meth:`buffer` waits for a free one
    (the hash is then that many chunks behind), :meth:`put` hands one over filled.
    """

    DEPTH = 4

    def __init__(self, hasher: hashlib._Hash, size: int = CHUNK) -> None:
        self.hasher = hasher
        self.free = deque(memoryview(bytearray(size)) for _ in range(self.DEPTH))
        self.full: deque[tuple[memoryview, int] | None] = deque()
        self.n_free = threading.Semaphore(self.DEPTH)
        self.n_full = threading.Semaphore(0)
        self.thread = threading.Thread(target=self._run, name="vzpkg-sha256", daemon=True)
        self.thread.start()

    def buffer(self) -> memoryview:
        self.n_free.acquire()
        return self.free.popleft()

    def put(self, buf: memoryview | None, n: int = 0) -> None:
        self.full.append(None if buf is None else (buf, n))
        self.n_full.release()

    def _run(self) -> None:
        while True:
            self.n_full.acquire()
            item = self.full.popleft()
            if item is None:
                return
            buf, n = item
            self.hasher.update(buf[:n])
            self.free.append(buf)
            self.n_free.release()

    def finish(self) -> None:
        """Wait until every chunk put is in the hash."""
        self.put(None)
        self.thread.join()


class Fetcher:
    def __init__(self, connect_timeout: float, read_timeout: float) -> None:
        self.timeout = (connect_timeout, read_timeout)
        self.client = Client(connect_timeout, read_timeout,
                             {"User-Agent": f"vzpkg/{__version__}",
                              "Accept-Encoding": "identity"})

    def close(self) -> None:
        self.client.close()

    def _get(self, url: str, headers: dict[str, str] | None = None) -> Response:
        try:
            return self.client.get(url, headers)
        except HttpError as exc:
            raise FetchError(exc.message, hint=exc.hint) from None

    @staticmethod
    def _status_error(url: str, r: Response) -> FetchError:
        r.close()
        return FetchError(f"{url}: HTTP {r.status_code} {r.reason}",
                          hint="the file is missing on the mirror or the server failed")

    def get_bytes(self, url: str, *, limit: int = SMALL_LIMIT) -> bytes:
        """A small file (index, signature, manifest), whole, into memory."""
        r = self._get(url)
        if r.status_code != 200:
            raise self._status_error(url, r)
        buf = bytearray()
        try:
            with r:
                while chunk := r.read1(CHUNK):
                    buf += chunk
                    if len(buf) > limit:
                        raise FetchError(f"{url}: larger than {limit} bytes; refused")
        except OSError as exc:
            raise FetchError(f"{url}: transfer failed: {describe(exc)}") from None
        return bytes(buf)

    def download(self, url: str, part: Path, size: int, progress: Progress,
                 name: str, sink: Sink | None = None) -> Download:
        """Complete *part* to *size* bytes from *url*, resuming what is there.

        Every byte of the file, kept or received, is offered to *sink* (a
        signature check) right after it is written, and the file is flushed to
        disk behind the writer (:class:`vzpkg.mirror.flush.Flusher`) and made
        durable before this returns, so the fsync at commit finds nothing to do.
        """
        sink = sink or NoSink()
        sink.restart()
        offset = part.stat().st_size if part.exists() else 0
        if offset > size:
            offset = 0
        hasher = hashlib.sha256()
        if offset:
            with part.open("rb") as f:
                hashed = 0
                while hashed < offset:
                    chunk = f.read(min(CHUNK, offset - hashed))
                    if not chunk:
                        break
                    hasher.update(chunk)
                    hashed += len(chunk)
                    sink.feed(f.fileno(), hashed, wait=hashed == size)
        if offset == size:
            if size == 0:
                part.touch()
            return Download(hasher.hexdigest(), size, 0, offset, hasher)
        r = self._get(url, {"Range": f"bytes={offset}-"} if offset else None)
        if r.status_code == 416 and offset:
            r.close()
            part.unlink()
            return self.download(url, part, size, progress, name, sink)
        if r.status_code == 206:
            m = CONTENT_RANGE.match(r.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != offset or int(m.group(3)) != size:
                r.close()
                raise FetchError(f"{url}: server answered range {offset}- with "
                                 f"{r.headers.get('Content-Range')!r}; expected a total of "
                                 f"{size} bytes", corrupt=True)
        elif r.status_code == 200:
            if offset:
                offset = 0
                sink.restart()
            length = r.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) != size:
                r.close()
                raise FetchError(f"{url}: the mirror's file is {length} bytes, the signed "
                                 f"index says {size}", corrupt=True,
                                 hint="the mirror is damaged or being updated; try again "
                                      "later or another mirror")
        else:
            raise self._status_error(url, r)
        encoding = r.headers.get("Content-Encoding", "identity").lower()
        if encoding not in ("", "identity"):
            r.close()
            raise FetchError(f"{url}: served with Content-Encoding {encoding}",
                             hint="serve cache files as they are (no on-the-fly "
                                  "compression)")
        progress.start(name, size, offset, url)
        if not offset:                  # a 200 to a range request starts from zero
            hasher = hashlib.sha256()
        try:
            with r, open(part, "r+b" if offset else "w+b", buffering=0) as f:
                f.truncate(offset)
                with Flusher(f.fileno(), offset) as flusher:
                    got = self._receive(r, f.fileno(), url, offset, size, hasher, sink,
                                        progress, flusher)
                    if got == size:
                        sink.feed(f.fileno(), got, wait=True)
                        flusher.finish()        # durable: the store's fsync is a no-op
        except OSError as exc:
            progress.finish(False)
            raise MirrorError(f"cannot write {part}: {exc.strerror}",
                              hint="free space in the cache directory") from None
        except FetchError:
            progress.finish(False)
            raise
        if got < size:
            progress.finish(False)
            raise FetchError(f"{url}: truncated: got {got} of {size} bytes",
                             partial=got > offset, fetched=got - offset)
        progress.finish(True)
        return Download(hasher.hexdigest(), size, got - offset, offset, hasher)

    def _receive(self, r: Response, fd: int, url: str, offset: int, size: int,
                 hasher: hashlib._Hash, sink: Sink, progress: Progress,
                 flusher: Flusher) -> int:
        """Write the body at *offset* of *fd*, hashing and feeding it; bytes now there.
        The sha256 is computed on a thread of its own, a few chunks behind."""
        got = offset
        hashing = HashThread(hasher)
        try:
            while True:
                buf = hashing.buffer()
                n = self._read(r, url, got, size, offset, buf)
                if not n:
                    break
                if got + n > size:
                    raise FetchError(f"{url}: more data than the {size} bytes the index "
                                     "names; refused", corrupt=True)
                view = buf[:n]
                while view:
                    view = view[os.pwrite(fd, view, got + n - len(view)):]
                hashing.put(buf, n)
                got += n
                sink.feed(fd, got)
                flusher.wrote(got)
                progress.update(got)
        finally:
            hashing.finish()
        return got

    @staticmethod
    def _read(r: Response, url: str, got: int, size: int, offset: int,
              buf: memoryview) -> int:
        """What has arrived, into *buf* (read1: a cut loses nothing already received)."""
        try:
            return r.readinto1(buf)
        except OSError as exc:
            raise FetchError(f"{url}: transfer cut after {got} of {size} bytes: "
                             f"{describe(exc)}", partial=got > offset,
                             fetched=got - offset) from None
