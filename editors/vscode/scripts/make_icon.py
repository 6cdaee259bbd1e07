"""Draws the extension's icon, media/icon.png: a half-filled circle ("demi", half) on a rounded square.

Our own art, made here with the standard library only (no image packages, nothing copied), so
anyone can redraw it: `python3 editors/vscode/scripts/make_icon.py`. The picture is a function of
nothing but the constants below; tests/lsp/test_vscode_extension.py checks the committed file
against `render()`.
"""

from __future__ import annotations

import math
import struct
import sys
import zlib
from pathlib import Path

SIZE = 128
SAMPLES = 4  # per side of a pixel: 16 samples smooth the edges
CORNER = 26.0  # radius of the square's corners
TOP = (0x3B, 0x3F, 0xA8)  # the background's gradient, top to bottom
BOTTOM = (0x1C, 0x1E, 0x5C)
INK = (0xF4, 0xF1, 0xE8)
RADIUS = 38.0  # the circle
RING = 7.0  # the width of its outline
GAP = 5.0  # between the filled half and the outline
OUT = Path(__file__).resolve().parent.parent / "media" / "icon.png"


def _in_rounded_square(x: float, y: float) -> bool:
    cx = min(max(x, CORNER), SIZE - CORNER)
    cy = min(max(y, CORNER), SIZE - CORNER)
    return (x - cx) ** 2 + (y - cy) ** 2 <= CORNER**2


def _is_ink(x: float, y: float) -> bool:
    centre = SIZE / 2
    d = math.hypot(x - centre, y - centre)
    if RADIUS - RING <= d <= RADIUS:
        return True  # the outline
    return d <= RADIUS - RING - GAP and x <= centre  # the left half, filled


def render() -> bytes:
    """The icon's pixels: SIZE rows of SIZE RGBA pixels, 8 bits a channel."""
    rows = bytearray()
    n = SAMPLES * SAMPLES
    for py in range(SIZE):
        for px in range(SIZE):
            covered = 0
            rgb = [0.0, 0.0, 0.0]
            for sy in range(SAMPLES):
                for sx in range(SAMPLES):
                    x = px + (sx + 0.5) / SAMPLES
                    y = py + (sy + 0.5) / SAMPLES
                    if not _in_rounded_square(x, y):
                        continue
                    covered += 1
                    t = y / SIZE
                    colour = INK if _is_ink(x, y) else tuple(a + (b - a) * t for a, b in zip(TOP, BOTTOM))
                    for i in range(3):
                        rgb[i] += colour[i]
            if covered:
                rows.extend(round(c / covered) for c in rgb)
            else:
                rows.extend((0, 0, 0))
            rows.append(round(255 * covered / n))
    return bytes(rows)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(pixels: bytes) -> bytes:
    """A PNG file of SIZE x SIZE RGBA `pixels` (no filtering: each row starts with filter byte 0)."""
    stride = SIZE * 4
    raw = b"".join(b"\x00" + pixels[r * stride : (r + 1) * stride] for r in range(SIZE))
    header = struct.pack(">IIBBBBB", SIZE, SIZE, 8, 6, 0, 0, 0)  # 8-bit RGBA, no interlace
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b"")
    )


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(encode_png(render()))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
