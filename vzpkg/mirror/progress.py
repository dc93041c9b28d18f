"""Download progress for people: a bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from vzpkg.core.units import human_size


class TextProgress:
    """Implements :class:`vzpkg.mirror.fetch.Progress` on a text stream.

    On a TTY one line is redrawn at most ten times a second; elsewhere (logs,
    pipes) a line is printed at the start, at every quarter and at the end.
    """

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.name = ""
        self.total = 0
        self.started = 0.0
        self.first = 0
        self.last_draw = 0.0
        self.quarter = 0

    def start(self, name: str, total: int, done: int, source: str) -> None:
        self.name, self.total, self.first = name, total, done
        self.started = self.last_draw = time.monotonic()
        self.quarter = 4 * done // total if total else 4
        resumed = f", resuming at {human_size(done)}" if done else ""
        self._line(f"{name}: downloading {human_size(total)} from {source}{resumed}")

    def update(self, done: int) -> None:
        now = time.monotonic()
        if self.tty:
            if now - self.last_draw >= 0.1 or done == self.total:
                self.last_draw = now
                self._bar(done, now)
        elif self.total and 4 * done // self.total > self.quarter:
            self.quarter = 4 * done // self.total
            if self.quarter < 4:
                self._line(f"{self.name}: {25 * self.quarter}% "
                           f"({human_size(done)} of {human_size(self.total)})")

    def finish(self, ok: bool) -> None:
        secs = max(time.monotonic() - self.started, 1e-6)
        if self.tty:
            self.stream.write("\r\033[K")
        state = "done" if ok else "interrupted"
        if ok:
            rate = human_size((self.total - self.first) / secs)
            self._line(f"{self.name}: {state}, {human_size(self.total)} in {secs:.1f}s "
                       f"({rate}/s)")
        else:
            self._line(f"{self.name}: {state}")

    def note(self, message: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
        self._line(message)

    def _bar(self, done: int, now: float) -> None:
        frac = done / self.total if self.total else 1.0
        width = 30
        fill = int(frac * width)
        rate = (done - self.first) / max(now - self.started, 1e-6)
        self.stream.write(f"\r{self.name} [{'#' * fill}{'.' * (width - fill)}] "
                          f"{frac * 100:5.1f}% {human_size(done)}/{human_size(self.total)} "
                          f"{human_size(rate)}/s\033[K")
        self.stream.flush()

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()
