"""Image decoding with documented conversion rules, so every family sees RGB uint8 HxWx3.

Rules (applied to files and to arrays passed to a pipeline):
- grayscale (H, W) or (H, W, 1): replicated to three channels;
- 4 channels (RGBA from arrays; BGRA from files): alpha is dropped, colour kept as stored
  (the same as PIL's ``convert("RGB")``);
- 16-bit (uint16): scaled to 8-bit by ``round(v / 257)`` (65535 -> 255 exactly);
- any other dtype (float, int32, ...): refused, never cast silently;
- zero-size, truncated or undecodable files: refused for that item only;
- more than ``max_pixels`` pixels (default 40 megapixels): refused, for files from the header
  (``image_header``) before anything is decoded; every page of a TIFF counts;
- a file larger than its pixels can take (``max_file_bytes``): refused before it is read, and
  no read goes past that bound;
- a JPEG whose scan data is cut short or corrupt (libjpeg's "Corrupt JPEG data" warnings, which
  OpenCV would answer with grey rows; ``jpeg_warnings``): refused;
- formats whose header is not read (anything but PNG, JPEG, BMP, TIFF, WebP): refused;
- several frames or pages (APNG, multi-page TIFF, animated WebP): the first one is used, as
  OpenCV reads it.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np

from batchforge.errors import InputValidationError
from batchforge.runtime.image_header import ImageHeader, read_header
from batchforge.runtime.jpeg_warnings import decode_with_warnings

DEFAULT_MAX_PIXELS = 40_000_000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# The largest file an image of N pixels can be: 8 bytes is the widest pixel decoded here (16-bit
# RGBA), and encoders expand incompressible pixels only by a small factor. Measured on uniform
# noise (OpenCV 5.0 encoders): TIFF LZW, OpenCV's default, 1.36x (10.9 bytes per 16-bit RGBA
# pixel); JPEG quality 100 4:4:4 1.37x (4.1 bytes per RGB pixel); PNG 1.002x; PackBits or
# uncompressed TIFF, WebP lossless and BMP <= 1.01x. Twice the widest pixel bounds them all with
# room; METADATA_BYTES is for what is not pixels (EXIF, ICC profiles, thumbnails, XMP).
FILE_BYTES_PER_PIXEL = 16
METADATA_BYTES = 16 * 2**20


def max_file_bytes(pixels: int) -> int:
    """The largest file accepted for an image of ``pixels`` pixels (see FILE_BYTES_PER_PIXEL)."""
    return pixels * FILE_BYTES_PER_PIXEL + METADATA_BYTES


def _check_file_size(size: int, limit: int, source: str, what: str, hint: str) -> None:
    if size > limit:
        raise InputValidationError(
            f"{source}: file is {size:,} bytes, above the {limit:,} bytes {what} "
            f"({FILE_BYTES_PER_PIXEL} bytes per pixel + {METADATA_BYTES // 2**20} MiB of metadata)",
            hint=hint)


def _check_header_size(size: int, header: ImageHeader, max_pixels: int, source: str) -> int:
    """The file-size bound of an image with this header (raises when ``size`` is above it)."""
    limit = max_file_bytes(min(header.total_pixels, max_pixels))
    shape = f"{header.width}x{header.height}"
    pages = f" ({header.frames} pages/frames)" if header.frames > 1 else ""
    _check_file_size(size, limit, source, f"a {shape}{pages} {header.format} can take",
                     "re-encode it: a file this much larger than its pixels is padded or malformed")
    return limit


def _check_pixels(height: int, width: int, max_pixels: int, source: str) -> None:
    if height == 0 or width == 0:
        raise InputValidationError(f"{source}: zero-size image ({height}x{width})")
    if height * width > max_pixels:
        raise InputValidationError(
            f"{source}: image is {width}x{height} = {height * width:,} pixels, above the limit "
            f"of {max_pixels:,}",
            hint="downscale it first or raise the limit with --max-pixels",
        )


def to_rgb_uint8(image: np.ndarray, *, source: str = "image", bgr: bool = False,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Applies the module's conversion rules to an array.

    Args:
        image: (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); uint8 or uint16.
        source: a name for error messages.
        bgr: True when colour channels are in OpenCV's BGR(A) order.
        max_pixels: refuse larger images.
    Returns:
        A C-contiguous RGB uint8 array of shape (H, W, 3).
    """
    if not isinstance(image, np.ndarray):
        raise InputValidationError(f"{source}: expected a numpy array, got {type(image).__name__}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise InputValidationError(
            f"{source}: expected an image of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
            f"got {image.shape}"
        )
    _check_pixels(image.shape[0], image.shape[1], max_pixels, source)
    if image.dtype == np.uint16:
        image = np.round(image.astype(np.float32) / 257.0).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise InputValidationError(
            f"{source}: expected uint8 or uint16 pixels, got {image.dtype}",
            hint="convert explicitly, e.g. (array * 255).round().astype(np.uint8)",
        )
    channels = image.shape[2]
    if bgr and channels == 3:  # OpenCV's swap: the same bytes as the strided copy, a third of the time
        return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_BGR2RGB)
    if channels == 1:
        image = np.repeat(image, 3, axis=2)
    elif channels == 4:
        image = image[:, :, :3]
    if bgr:
        image = image[:, :, ::-1]
    return np.ascontiguousarray(image)


def _looks_truncated(data: bytes) -> str | None:
    if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-64:]:
        return "JPEG data ends without its end-of-image marker"
    if data[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" not in data[-32:]:
        return "PNG data ends without its IEND chunk"
    return None


def check_header(fh: BinaryIO, *, source: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageHeader:
    """Reads the image header of ``fh`` and applies the pixel limit (to every TIFF page) before
    anything is decoded; returns the header."""
    header = read_header(fh, source)
    _check_pixels(header.height, header.width, max_pixels, source)
    for page, (width, height) in enumerate(header.later_pages, start=2):
        if width * height > max_pixels:
            raise InputValidationError(
                f"{source}: TIFF page {page} is {width}x{height} = {width * height:,} pixels, above "
                f"the limit of {max_pixels:,}", hint="split the pages or raise the limit with --max-pixels")
    return header


def _imdecode(data: bytes, source: str) -> np.ndarray | None:
    """OpenCV's decode of ``data``; a JPEG whose scan data libjpeg found cut or corrupt raises."""
    buffer = np.frombuffer(data, np.uint8)
    if data[:2] != b"\xff\xd8":
        return cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    decoded, warnings = decode_with_warnings(lambda: cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED))
    if warnings:
        raise InputValidationError(
            f"{source}: truncated or corrupt JPEG: libjpeg reports \"{warnings[0]}\" (the rows it "
            "could not decode would come back grey)", hint="re-encode or re-transfer the file")
    return decoded


def decode_image(data: bytes, *, source: str = "image",
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decodes encoded image bytes to RGB uint8 (H, W, 3) with the module's rules."""
    if not data:
        raise InputValidationError(f"{source}: empty file (0 bytes)")
    header = check_header(io.BytesIO(data), source=source, max_pixels=max_pixels)
    _check_header_size(len(data), header, max_pixels, source)
    reason = _looks_truncated(data)
    if reason:
        raise InputValidationError(f"{source}: truncated image: {reason}")
    try:
        decoded = _imdecode(data, source)
    except cv2.error as exc:
        detail = (str(exc).strip().splitlines() or ["cv2.error"])[-1].strip()
        raise InputValidationError(f"{source}: OpenCV could not decode it: {detail[:200]}") from None
    if decoded is None or decoded.size == 0:
        raise InputValidationError(
            f"{source}: not a decodable image (expected one of {', '.join(IMAGE_SUFFIXES)})"
        )
    return to_rgb_uint8(decoded, source=source, bgr=decoded.ndim == 3 and decoded.shape[2] >= 3,
                        max_pixels=max_pixels)


def read_image_bytes(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """The encoded bytes of an image file: the file size checked against the pixel limit and the
    header (size rules) before the rest is read, and the read bounded by what the header allows."""
    path = Path(path)
    source = str(path)
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            _check_file_size(size, max_file_bytes(max_pixels), source,
                             f"the pixel limit of {max_pixels:,} allows",
                             "downscale or re-encode it, or raise the limit with --max-pixels")
            limit = _check_header_size(size, check_header(fh, source=source, max_pixels=max_pixels),
                                       max_pixels, source)
            fh.seek(0)
            data = fh.read(limit + 1)  # a file that grew, or is no regular file, stops here
    except OSError as exc:
        raise InputValidationError(f"{path}: cannot read file: {exc.strerror}") from None
    if len(data) > limit:
        raise InputValidationError(f"{source}: more than {limit:,} bytes could be read, above what its "
                                   "header allows (the file grew, or is not a regular file)")
    return data


def read_image(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Reads and decodes an image file (see the module docstring for the rules); the header is
    checked before the rest of the file is read."""
    data = read_image_bytes(path, max_pixels=max_pixels)
    return decode_image(data, source=str(Path(path)), max_pixels=max_pixels)


def write_image(path: str | os.PathLike[str], rgb: np.ndarray) -> None:
    """Writes an RGB uint8 image (the format follows the suffix)."""
    ok = cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise InputValidationError(f"{path}: OpenCV could not write an image with this suffix")


def list_images(pattern: str | os.PathLike[str], suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    """Files of a folder (sorted, ``suffixes`` only) or of a glob pattern (sorted, all files).

    A glob names files explicitly, so non-image files it matches are kept and get an error
    record instead of being skipped silently.
    """
    text = str(pattern)
    path = Path(text)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if any(ch in text for ch in "*?["):
        root = Path(text.split("*")[0].split("?")[0].split("[")[0] or ".")
        base = root if root.is_dir() else root.parent
        relative = os.path.relpath(text, base)
        return sorted(p for p in base.glob(relative) if p.is_file())
    if path.is_file():
        return [path]
    raise InputValidationError(
        f"input {text!r} is neither a folder, a file nor a glob pattern that matches files"
    )
