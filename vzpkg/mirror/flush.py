"""Make a file durable while it is being written, not after.

On a virtual disk the cost of ``fsync`` is mostly the cache flush the device
does for all the data written since the last one, about the time it took the
network to deliver it: done only at the end, it doubles a pull.  A
:class:`Flusher` starts writeback of each new stretch (``sync_file_range``)
and lets a thread ``fdatasync`` behind the writer, so that when the last byte
arrives only the tail is left to flush.  The final :meth:`Flusher.finish` is a
real ``fdatasync`` of the whole file: durability does not depend on the
thread, which only moves work earlier.
"""

from __future__ import annotations

import functools
import os
import threading
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ctypes

STEP = 8 << 20              # flush behind the writer after this many new bytes
SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _libc_sync_file_range() -> ctypes._NamedFuncPointer | None:
    """Looked up at the first writeback, not at import (ctypes costs a few ms).
    The C library is already loaded into the interpreter: ``CDLL(None)`` finds
    it without ``ctypes.util.find_library``, which runs ``ldconfig -p``."""
    import ctypes
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def start_writeback(fd: int, offset: int, count: int) -> None:
    """Start writing [offset, offset + count) of *fd* to disk, without waiting."""
    if count > 0 and (fn := _libc_sync_file_range()) is not None:
        fn(fd, offset, count, SYNC_FILE_RANGE_WRITE)


class Flusher:
    """Flushes *fd* behind a writer that reports its progress with :meth:`wrote`.

    Use as a context manager around the writes; call :meth:`finish` after the
    last one for the final fdatasync (leaving the block without it, e.g. on an
    error, just stops the thread).
    """

    def __init__(self, fd: int, offset: int = 0, *, step: int = STEP) -> None:
        self.fd = fd
        self.step = step
        self.written = self.kicked = self.synced = offset
        self.error: OSError | None = None
        self.stopping = False
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="vzpkg-flush", daemon=True)
        self.thread.start()

    def __enter__(self) -> Flusher:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop()

    def wrote(self, upto: int) -> None:
        """Bytes up to *upto* are written: start their writeback, wake the thread."""
        self.written = upto
        if upto - self.kicked >= self.step:
            start_writeback(self.fd, self.kicked, upto - self.kicked)
            self.kicked = upto
            with self.cond:
                self.cond.notify()

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.stopping and self.kicked - self.synced < self.step:
                    self.cond.wait()
                if self.stopping:
                    return
                target = self.kicked
            try:
                os.fdatasync(self.fd)
            except OSError as exc:
                self.error = exc
                return
            self.synced = target

    def _stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()
        self.thread.join()

    def finish(self) -> None:
        """Wait for the thread, then fdatasync everything; OSError if the disk failed."""
        self._stop()
        if self.error is not None:
            raise self.error
        os.fdatasync(self.fd)
