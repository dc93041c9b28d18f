"""A small PNG line chart, written with zlib alone (no plotting library needed for
one figure): axes with numbered ticks, one polyline per series."""

from __future__ import annotations

import itertools
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

# 3x5 digits and the few signs tick labels need
_GLYPHS = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111",
    "3": "111001111001111", "4": "101101111001001", "5": "111100111001111",
    "6": "111100111101111", "7": "111001001001001", "8": "111101111101111",
    "9": "111101111001111", ".": "000000000000010", "-": "000000111000000",
    " ": "000000000000000",
}
COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189))


class Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.w, self.h = width, height
        self.px = bytearray(b"\xff" * (width * height * 3))

    def dot(self, x: int, y: int, rgb: tuple[int, int, int], size: int = 1) -> None:
        for dx in range(size):
            for dy in range(size):
                xx, yy = x + dx, y + dy
                if 0 <= xx < self.w and 0 <= yy < self.h:
                    i = (yy * self.w + xx) * 3
                    self.px[i:i + 3] = bytes(rgb)

    def line(self, x0: int, y0: int, x1: int, y1: int, rgb: tuple[int, int, int],
             size: int = 1) -> None:
        n = max(abs(x1 - x0), abs(y1 - y0), 1)
        for k in range(n + 1):
            self.dot(x0 + (x1 - x0) * k // n, y0 + (y1 - y0) * k // n, rgb, size)

    def text(self, x: int, y: int, s: str, scale: int = 2) -> None:
        for j, ch in enumerate(s):
            glyph = _GLYPHS.get(ch, _GLYPHS[" "])
            for k, bit in enumerate(glyph):
                if bit == "1":
                    self.dot(x + (j * 4 + k % 3) * scale, y + (k // 3) * scale,
                             (0, 0, 0), scale)

    def png(self) -> bytes:
        raw = b"".join(b"\x00" + bytes(self.px[r * self.w * 3:(r + 1) * self.w * 3])
                       for r in range(self.h))

        def chunk(kind: bytes, data: bytes) -> bytes:
            return (struct.pack(">I", len(data)) + kind + data
                    + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
        head = struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head)
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def _ticks(top: float) -> list[float]:
    step = 10 ** len(str(int(max(top, 1)))) / 10
    while top / step > 6:
        step *= 2
    return [i * step for i in range(int(top // step) + 1)]


def line_chart(path: Path, xs: Sequence[float], series: Sequence[Sequence[float]],
               width: int = 720, height: int = 440) -> None:
    """Write a chart of each series in *series* against *xs* to *path*."""
    c = Canvas(width, height)
    left, bottom, right, top = 70, height - 40, width - 20, 20
    xmax = max(xs) or 1
    ymax = max((v for s in series for v in s), default=1) * 1.1 or 1
    c.line(left, bottom, right, bottom, (0, 0, 0), 2)
    c.line(left, bottom, left, top, (0, 0, 0), 2)

    def at(x: float, y: float) -> tuple[int, int]:
        return (left + int((right - left) * x / xmax), bottom - int((bottom - top) * y / ymax))
    for t in _ticks(xmax):
        x, _ = at(t, 0)
        c.line(x, bottom, x, bottom + 5, (0, 0, 0))
        c.text(x - 8, bottom + 10, f"{t:g}")
    for t in _ticks(ymax):
        _, y = at(0, t)
        c.line(left - 5, y, left, y, (0, 0, 0))
        c.line(left + 1, y, right, y, (225, 225, 225))
        c.text(8, y - 5, f"{t:g}")
    for s, colour in zip(series, COLOURS, strict=False):
        points = [at(x, y) for x, y in zip(xs, s, strict=True)]
        for (x0, y0), (x1, y1) in itertools.pairwise(points):
            c.line(x0, y0, x1, y1, colour, 2)
        for x, y in points:
            c.dot(x - 2, y - 2, colour, 5)
    path.write_bytes(c.png())
