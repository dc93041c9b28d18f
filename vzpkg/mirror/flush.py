"""Make a file durable while it is being written, not after.

On a virtual disk the cost of ``fsync`` is mostly the cache flush the device
does for all the data written since the last one, about the time it took the
network to deliver it: done only at the end, it doubles a pull.  A
:class:`Flusher` lets a thread ``fdatasync`` behind the writer every few
megabytes (the writer only counts; the kernel starts the writeback when the
thread asks), so that when the last byte arrives only the tail is left to
flush.  The final :meth:`Flusher.finish` is a real ``fdatasync`` of the whole
file: durability does not depend on the thread, which only moves work earlier.

(Starting the writeback from the writer with ``sync_file_range`` as well made
no difference in bench/mirror.py's pulls and cost ctypes at start-up.)
"""

from __future__ import annotations

import os
import threading
from types import TracebackType

STEP = 8 << 20              # flush behind the writer after this many new bytes


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
        """Bytes up to *upto* are written: every *step* bytes, wake the thread."""
        self.written = upto
        if upto - self.kicked >= self.step:
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
