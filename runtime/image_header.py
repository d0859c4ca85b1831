"""Image dimensions, bit depth and frame count read from the file header, before any decoding.

So the pixel limit is applied before OpenCV allocates the image: a 1 MB PNG that claims
20000x20000 is refused after reading a few dozen bytes, not after decoding 1.2 GB of pixels.
Covers the formats ``IMAGE_SUFFIXES`` names: PNG (with APNG frame count), JPEG (SOF segment),
BMP, TIFF (first IFD; pages counted), WebP (VP8, VP8L, VP8X). Any other format is refused by
name rather than decoded unchecked.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

from batchforge.errors import InputValidationError

HEADER_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WebP")
_MAX_TIFF_PAGES = 4096  # pages counted before giving up (a loop of IFD offsets stops here too)
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


@dataclass(frozen=True)
class ImageHeader:
    """What the header says; ``frames`` counts pages/animation frames (1 for still images)."""

    format: str
    width: int
    height: int
    bit_depth: int
    frames: int = 1


class _Reader:
    """Exact reads from a file object; running out of bytes is a truncated header."""

    def __init__(self, fh: BinaryIO, source: str) -> None:
        self.fh = fh
        self.source = source

    def at(self, offset: int, size: int) -> bytes:
        self.fh.seek(offset)
        return self.take(size)

    def take(self, size: int) -> bytes:
        data = self.fh.read(size)
        if len(data) != size:
            raise InputValidationError(f"{self.source}: truncated image header")
        return data

    def skip(self, size: int) -> None:
        self.fh.seek(size, 1)


def _png(r: _Reader) -> ImageHeader:
    length, kind = struct.unpack(">I4s", r.at(8, 8))
    if kind != b"IHDR" or length < 13:
        raise InputValidationError(f"{r.source}: truncated or malformed PNG: no IHDR chunk after the signature")
    width, height, depth = struct.unpack(">IIB", r.take(9))
    r.skip(length - 9 + 4)  # rest of IHDR + CRC
    frames = 1
    for _ in range(256):  # acTL, when present, comes before the first IDAT
        chunk = r.fh.read(8)
        if len(chunk) < 8:
            break
        length, kind = struct.unpack(">I4s", chunk)
        if kind == b"acTL":
            frames = struct.unpack(">I", r.take(4))[0]
            break
        if kind in (b"IDAT", b"IEND"):
            break
        r.skip(length + 4)
    return ImageHeader("PNG", width, height, depth, frames)


def _jpeg(r: _Reader) -> ImageHeader:
    r.fh.seek(2)
    while True:
        byte = r.take(1)
        if byte != b"\xff":
            raise InputValidationError(f"{r.source}: malformed JPEG header (expected a marker)")
        marker = r.take(1)[0]
        while marker == 0xFF:  # fill bytes
            marker = r.take(1)[0]
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            continue
        if marker in (0xD9, 0xDA):
            raise InputValidationError(f"{r.source}: JPEG without a frame header before its scan data")
        length = struct.unpack(">H", r.take(2))[0]
        if length < 2:
            raise InputValidationError(f"{r.source}: malformed JPEG segment length {length}")
        if marker in _JPEG_SOF:
            depth, height, width, _components = struct.unpack(">BHHB", r.take(6))
            if height == 0:
                raise InputValidationError(
                    f"{r.source}: JPEG whose height is given only after the scan (DNL) is not supported")
            return ImageHeader("JPEG", width, height, depth)
        r.skip(length - 2)


def _bmp(r: _Reader) -> ImageHeader:
    size = struct.unpack("<I", r.at(14, 4))[0]
    if size == 12:  # OS/2 BITMAPCOREHEADER
        width, height, _planes, depth = struct.unpack("<HHHH", r.take(8))
    elif size >= 40:
        width, height, _planes, depth = struct.unpack("<iiHH", r.take(12))
    else:
        raise InputValidationError(f"{r.source}: BMP with an unknown header size {size}")
    return ImageHeader("BMP", abs(width), abs(height), depth)


def _tiff_tags(r: _Reader, order: str, entries: bytes, count: int) -> dict[int, int]:
    """First value of each SHORT/LONG tag of one IFD (BitsPerSample may point to an array)."""
    tags: dict[int, int] = {}
    for i in range(count):
        tag, kind, n = struct.unpack(order + "HHI", entries[12 * i:12 * i + 8])
        raw = entries[12 * i + 8:12 * i + 12]
        if kind == 3 and n <= 2:  # SHORTs stored in the field itself
            tags[tag] = struct.unpack(order + "H", raw[:2])[0]
        elif kind == 3 and tag == 258:  # one depth per sample, stored at an offset
            tags[tag] = struct.unpack(order + "H", r.at(struct.unpack(order + "I", raw)[0], 2))[0]
        elif kind == 4:
            tags[tag] = struct.unpack(order + "I", raw)[0]
    return tags


def _tiff(r: _Reader, head: bytes) -> ImageHeader:
    order = "<" if head[:2] == b"II" else ">"
    offset = struct.unpack(order + "I", head[4:8])[0]
    first: dict[int, int] = {}
    pages, seen = 0, set()
    while offset and offset not in seen and pages < _MAX_TIFF_PAGES:
        seen.add(offset)
        count = struct.unpack(order + "H", r.at(offset, 2))[0]
        entries = r.take(12 * count)
        if pages == 0:
            first = _tiff_tags(r, order, entries, count)
        pages += 1
        offset = struct.unpack(order + "I", r.at(offset + 2 + 12 * count, 4))[0]
    if 256 not in first or 257 not in first:
        raise InputValidationError(f"{r.source}: TIFF whose first page has no width/length tags")
    return ImageHeader("TIFF", first[256], first[257], first.get(258, 1), pages)


def _webp_frames(r: _Reader) -> int:
    """ANMF chunks of an animated WebP, counted from the chunk headers (payloads skipped)."""
    frames, offset = 0, 30  # after RIFF, WEBP and the 18-byte VP8X chunk
    while True:
        r.fh.seek(offset)
        head = r.fh.read(8)
        if len(head) < 8:
            return max(frames, 1)
        frames += head[:4] == b"ANMF"
        offset += 8 + int.from_bytes(head[4:8], "little") + (int.from_bytes(head[4:8], "little") & 1)


def _webp(r: _Reader) -> ImageHeader:
    kind = r.at(12, 4)
    r.skip(4)  # chunk size
    if kind == b"VP8 ":
        frame = r.take(10)
        if frame[3:6] != b"\x9d\x01\x2a":
            raise InputValidationError(f"{r.source}: malformed WebP (VP8) frame header")
        width, height = struct.unpack("<HH", frame[6:10])
        return ImageHeader("WebP", width & 0x3FFF, height & 0x3FFF, 8)
    if kind == b"VP8L":
        data = r.take(5)
        if data[0] != 0x2F:
            raise InputValidationError(f"{r.source}: malformed WebP (VP8L) header")
        bits = int.from_bytes(data[1:5], "little")
        return ImageHeader("WebP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, 8)
    if kind == b"VP8X":
        data = r.take(10)
        width = int.from_bytes(data[4:7], "little") + 1
        height = int.from_bytes(data[7:10], "little") + 1
        return ImageHeader("WebP", width, height, 8, frames=_webp_frames(r) if data[0] & 0x02 else 1)
    raise InputValidationError(f"{r.source}: WebP with an unknown first chunk {kind!r}")


def read_header(fh: BinaryIO, source: str) -> ImageHeader:
    """The header of the image file ``fh`` (seekable, binary), read without decoding pixels.

    Raises:
        InputValidationError for an empty, truncated or malformed header, or a format whose
        header is not read here (named, with the formats that are).
    """
    r = _Reader(fh, source)
    head = fh.read(16)
    if not head:
        raise InputValidationError(f"{source}: empty file (0 bytes)")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png(r)
    if head.startswith(b"\xff\xd8"):
        return _jpeg(r)
    if head.startswith(b"BM"):
        return _bmp(r)
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff(r, head)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _webp(r)
    raise InputValidationError(
        f"{source}: not a decodable image: expected {', '.join(HEADER_FORMATS)} (the formats whose "
        "size is checked before decoding), got a file that starts with none of their signatures",
        hint="convert it to PNG or JPEG")
