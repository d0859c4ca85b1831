"""Image dimensions, bit depth and frame count read from the file header, before any decoding.

So the pixel limit is applied before OpenCV allocates the image: a 1 MB PNG that claims
20000x20000 is refused after reading a few dozen bytes, not after decoding 1.2 GB of pixels.
Covers the formats ``IMAGE_SUFFIXES`` names: PNG (with APNG frame count), JPEG (SOF segment),
BMP, TIFF (every IFD and every entry; a tag listed twice is refused), WebP (VP8, VP8L, VP8X).
Any other format is refused by name rather than decoded unchecked.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

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
    later_pages: tuple[tuple[int, int], ...] = ()  # (width, height) of TIFF pages 2, 3, ...

    @property
    def total_pixels(self) -> int:
        """Pixels of every page or frame (animation frames are at most the canvas size)."""
        if self.later_pages:
            return self.width * self.height + sum(w * h for w, h in self.later_pages)
        return self.width * self.height * max(self.frames, 1)


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


_TIFF_INTEGERS = {1: "B", 3: "H", 4: "I"}  # BYTE, SHORT, LONG: what libtiff reads a dimension from
_TIFF_NAMES = {256: "ImageWidth", 257: "ImageLength", 258: "BitsPerSample"}


def _tiff_value(r: _Reader, order: str, entry: bytes) -> int:
    """The first value of an integer entry, from the field itself or from where it points."""
    _tag, kind, count = struct.unpack(order + "HHI", entry[:8])
    fmt = order + _TIFF_INTEGERS[kind]
    size = struct.calcsize(fmt)
    raw = entry[8:12] if size * count <= 4 else r.at(struct.unpack(order + "I", entry[8:12])[0], size)
    return struct.unpack(fmt, raw[:size])[0]


def _tiff_page(r: _Reader, order: str, entries: bytes, page: int) -> dict[int, int]:
    """Width, length and (first) bit depth of one IFD, every entry read.

    A tag listed twice is refused: TIFF requires each tag once, and which occurrence a reader
    takes is its own choice (libtiff, inside OpenCV, takes the first; a header check that took
    the last would pass a file whose real size it never saw). A dimension that is not exactly
    one integer is refused for the same reason.
    """
    table = np.frombuffer(entries, np.dtype([("tag", order + "u2"), ("kind", order + "u2"),
                                             ("count", order + "u4"), ("value", "V4")]))
    numbers = np.sort(table["tag"])  # whole tables at once: 4096 pages of 65535 entries stay fast
    twice = numbers[1:][numbers[1:] == numbers[:-1]]
    if twice.size:
        tag = int(twice[0])
        raise InputValidationError(
            f"{r.source}: TIFF page {page} lists {_TIFF_NAMES.get(tag, f'tag {tag}')} ({tag}) twice; "
            "expected each tag once, so what a decoder would read is ambiguous and the file is refused",
            hint="re-save it with a TIFF writer such as tiffcp")
    tags: dict[int, int] = {}
    for row in table[np.isin(table["tag"], (256, 257, 258))]:
        tag, kind, count = int(row["tag"]), int(row["kind"]), int(row["count"])
        if tag in (256, 257):
            if kind not in _TIFF_INTEGERS or count != 1:
                raise InputValidationError(
                    f"{r.source}: TIFF page {page} gives {_TIFF_NAMES[tag]} as {count} value(s) of type "
                    f"{kind}; expected one BYTE, SHORT or LONG", hint="re-save it with a TIFF writer")
            tags[tag] = _tiff_value(r, order, row.tobytes())
        elif kind in _TIFF_INTEGERS and count >= 1:  # BitsPerSample: one depth per sample
            tags[tag] = _tiff_value(r, order, row.tobytes())
    if 256 not in tags or 257 not in tags:
        raise InputValidationError(f"{r.source}: TIFF page {page} has no ImageWidth/ImageLength tags")
    return tags


def _tiff(r: _Reader, head: bytes) -> ImageHeader:
    """The first page's size (the one OpenCV decodes) and every other page's, all IFDs read."""
    order = "<" if head[:2] == b"II" else ">"
    offset = struct.unpack(order + "I", head[4:8])[0]
    pages: list[dict[int, int]] = []
    seen: set[int] = set()
    while offset and offset not in seen and len(pages) < _MAX_TIFF_PAGES:
        seen.add(offset)
        count = struct.unpack(order + "H", r.at(offset, 2))[0]
        pages.append(_tiff_page(r, order, r.take(12 * count), len(pages) + 1))
        offset = struct.unpack(order + "I", r.at(offset + 2 + 12 * count, 4))[0]
    if not pages:
        raise InputValidationError(f"{r.source}: TIFF without an image directory (IFD offset 0)")
    first = pages[0]
    return ImageHeader("TIFF", first[256], first[257], first.get(258, 1), len(pages),
                       tuple((page[256], page[257]) for page in pages[1:]))


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
