"""Image files for tests, made without allocating their pixels: decompression bombs small on disk."""

from __future__ import annotations

import io
import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int = 30_000, height: int = 30_000, rows_per_segment: int = 100) -> bytes:
    """A valid grayscale PNG of ``width`` x ``height`` black pixels, under 1 MB for 30,000 x 30,000.

    The deflate stream repeats one byte-aligned segment (a full flush resets the history, so each copy
    stands alone), so the file is built in milliseconds; decoded it would take width x height bytes.
    """
    if height % rows_per_segment:
        raise ValueError("height must be a multiple of rows_per_segment")
    co = zlib.compressobj(9)
    raw_rows = b"\x00" * ((width + 1) * rows_per_segment)  # each row: filter byte 0, then its pixels
    first = co.compress(raw_rows) + co.flush(zlib.Z_FULL_FLUSH)
    header, segment = first[:2], first[2:]
    # Adler-32 of all-zero data: a stays 1, b is the length (RFC 1950 section 8).
    total = (width + 1) * height
    adler = ((total % 65521) << 16) | 1
    stream = header + segment * (height // rows_per_segment) + b"\x03\x00" + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")


def jpeg_with_size(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) claims ``width`` x ``height``: a JPEG bomb."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (16, 16), 200).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def png(width: int, height: int, mode: str = "L", color: int | tuple[int, ...] = 128) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, (width, height), color).save(buf, "PNG")
    return buf.getvalue()
