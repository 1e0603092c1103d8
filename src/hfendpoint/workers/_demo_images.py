"""
The demo worker's pictures: gradients painted as PNGs, with the few lines
of the format they need rather than a dependency on an imaging library.
"""

from __future__ import annotations

import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body))
        + kind
        + body
        + struct.pack(">I", zlib.crc32(kind + body))
    )


def encode_png(width: int, height: int, scanlines: bytes) -> bytes:
    """
    A PNG of 8-bit RGB C{scanlines}, each already prefixed by its filter
    byte: the few lines of the format the demo needs, rather than a
    dependency on an imaging library.
    """
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(scanlines, 6))
        + png_chunk(b"IEND", b"")
    )


Colour = tuple[int, int, int]


def palette(seed: bytes) -> tuple[Colour, Colour]:
    """
    Two colours drawn from C{seed}: the prompt picks the picture.
    """
    first = zlib.crc32(seed)
    second = zlib.crc32(seed, first)
    return (
        (first & 255, (first >> 8) & 255, (first >> 16) & 255),
        (second & 255, (second >> 8) & 255, (second >> 16) & 255),
    )


def blend(start: Colour, end: Colour, step: int, steps: int) -> bytes:
    if steps <= 1:
        return bytes(start)
    return bytes(a + (b - a) * step // (steps - 1) for a, b in zip(start, end))


def vertical_gradient(width: int, height: int, colours: tuple[Colour, Colour]) -> bytes:
    """
    One colour per row, so that each row is a single bytes multiplication:
    a 1024x1024 image costs milliseconds.
    """
    start, end = colours
    return encode_png(
        width,
        height,
        b"".join(b"\x00" + blend(start, end, y, height) * width for y in range(height)),
    )


def horizontal_gradient(
    width: int, height: int, colours: tuple[Colour, Colour]
) -> bytes:
    """
    One colour per column: a single row, repeated.
    """
    start, end = colours
    row = b"\x00" + b"".join(blend(start, end, x, width) for x in range(width))
    return encode_png(width, height, row * height)
