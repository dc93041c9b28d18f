"""Opening an archive for reading: plain tar, gzip, xz or zstd, recognised by
content.

With ``threaded=True`` a compressed archive is decompressed on a second thread
(the way ``zstd -dc | tar -x`` uses two processes): the thread fills 1 MiB
blocks with libarchive's raw reader and hands them over a bounded queue to the
tar reader's read callback.  ctypes releases the GIL while libarchive runs, so
decompression overlaps with extraction, and no byte is copied through a pipe.
"""

from __future__ import annotations

import ctypes
import functools
import os
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from vzpkg.archive import _lib as L
from vzpkg.core.errors import ArchiveError

BLOCK = 1 << 20
_DEPTH = 64                  # up to 64 MiB decompressed ahead: smooths bursts
DAMAGED = "the file is damaged or is not a tar archive (plain, .gz, .xz or .zst)"


def damaged(archive: Path, a: int | None) -> ArchiveError:
    return ArchiveError(f"{archive}: {L.message(a)}", hint=DAMAGED)


class _Inflater(threading.Thread):
    """Reads decompressed blocks from ``raw`` into ``blocks``; None ends them."""

    def __init__(self, raw: int) -> None:
        super().__init__(name="vzpkg-inflate", daemon=True)
        self.raw = raw
        self.blocks: queue.Queue[tuple[ctypes.Array[ctypes.c_char], int] | None] = \
            queue.Queue(_DEPTH)
        self.stop = threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                buf = ctypes.create_string_buffer(BLOCK)
                n = L.read_data(self.raw, buf, BLOCK)
                if n <= 0:
                    if n < 0:
                        self.error = L.message(self.raw)
                    break
                self.blocks.put((buf, n))
        finally:
            self.blocks.put(None)

    def finish(self) -> None:
        """Stop early if need be: drain the queue so a blocked put() returns."""
        self.stop.set()
        while self.is_alive():
            with suppress(queue.Empty):
                self.blocks.get(timeout=0.05)
        self.join()


class _Feed:
    """The tar reader's read callback, fed by an _Inflater."""

    def __init__(self, inflater: _Inflater) -> None:
        self.inflater = inflater
        self.current: ctypes.Array[ctypes.c_char] | None = None   # kept alive for libarchive
        self.done = False
        self.interrupted: BaseException | None = None
        self.callback = L.READ_CALLBACK(self._read)

    def _read(self, _a: int | None, _ctx: int | None, out: int | None) -> int:
        if self.done or out is None:
            return 0
        try:
            item = self.inflater.blocks.get()
        except BaseException as exc:      # e.g. Ctrl-C: cannot unwind through C
            self.interrupted = exc
            self.done = True
            return -1
        if item is None:
            self.done = True
            self.current = None
            return 0 if self.inflater.error is None else -1
        self.current, n = item
        ctypes.c_void_p.from_address(out).value = ctypes.addressof(self.current)
        return n


@contextmanager
def open_archive(archive: Path, *, threaded: bool = False
                 ) -> Iterator[tuple[int, Callable[[], int], int]]:
    """Yield (tar read handle, bytes of the file read so far, file size)."""
    try:
        fd = os.open(archive, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ArchiveError(f"cannot open {archive}: {exc.strerror}") from exc
    raw: int | None = None
    inflater: _Inflater | None = None
    feed: _Feed | None = None
    tar = L.read_new()
    try:
        size = os.fstat(fd).st_size
        L.check(tar, L.read_support_format_tar(tar), "tar format")
        if threaded:
            raw = L.read_new()
            for support in L.read_support_filter:
                L.check(raw, support(raw), "read filter")
            L.check(raw, L.read_support_format_raw(raw), "raw format")
            entry = ctypes.c_void_p()
            if not (L.read_open_fd(raw, fd, BLOCK) == L.OK
                    and L.read_next_header(raw, ctypes.addressof(entry)) == L.OK
                    and L.filter_count(raw) > 1):      # not compressed: read it directly
                L.read_free(raw)
                raw = None
                os.lseek(fd, 0, os.SEEK_SET)
        if raw is not None:
            inflater = _Inflater(raw)
            feed = _Feed(inflater)
            inflater.start()
            if L.read_open(tar, None, None, feed.callback, None) < L.WARN:
                raise damaged(archive, tar)
            position = functools.partial(L.filter_bytes, raw, -1)
        else:
            for support in L.read_support_filter:
                L.check(tar, support(tar), "read filter")
            if L.read_open_fd(tar, fd, BLOCK) < L.WARN:
                raise damaged(archive, tar)
            position = functools.partial(L.filter_bytes, tar, -1)
        try:
            yield tar, position, size
        except ArchiveError:
            if feed is not None and feed.interrupted is not None:
                raise feed.interrupted from None
            if inflater is not None and inflater.error is not None:
                raise ArchiveError(f"{archive}: {inflater.error}", hint=DAMAGED) from None
            raise
    finally:
        L.read_free(tar)
        if inflater is not None:
            inflater.finish()
        if raw is not None:
            L.read_free(raw)
        os.close(fd)
