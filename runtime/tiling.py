"""Tiling for images larger than a model's input: overlapping tiles in, blended maps out.

Shared by every family with dense outputs. Tiles are cut at the image's own resolution (a
defect of 5 pixels stays 5 pixels), with at least ``overlap`` pixels shared by neighbours; the
last tile of a row or column is aligned to the image edge, and an image smaller than a tile in
one dimension is reflect-padded up to it. Dense per-tile outputs are blended back by weighted
averaging. A CNN's output drifts near its input's edges (zero padding), so equal weights leave
a visible step where one tile's edge meets its neighbour's interior; weights that fall towards
each tile's edges (``linear`` ramps over the overlap, or a ``gaussian`` bump) hide it.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import cv2
import numpy as np

from batchforge.errors import InputValidationError
from batchforge.runtime.typed_options import settle


class Blend(str, enum.Enum):
    """How overlapping tile outputs are weighted."""

    LINEAR = "linear"  # ramps from the tile edge to full weight over the overlap
    GAUSSIAN = "gaussian"  # a separable Gaussian centred on the tile (sigma = tile / 8)
    UNIFORM = "uniform"  # plain averaging (shows seams; kept for comparison)


@dataclass(frozen=True)
class TilingOptions:
    """``enabled``: tile images larger than the model input (else they are resized)."""

    enabled: bool = True
    overlap_px: int = 32
    blend: Blend = Blend.LINEAR

    def __post_init__(self) -> None:
        settle(self)

    def value_problems(self) -> list[tuple[tuple[str, ...], str]]:
        if self.overlap_px >= 0:
            return []
        return [(("overlap_px",), f"overlap_px: expected >= 0, got {self.overlap_px}")]


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one image sit: top-left corners ``ys`` x ``xs`` (row-major order)."""

    height: int
    width: int
    tile_height: int
    tile_width: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.ys) * len(self.xs)

    @property
    def positions(self) -> list[tuple[int, int]]:
        """(y, x) of every tile, row by row."""
        return [(y, x) for y in self.ys for x in self.xs]

    @property
    def padded_shape(self) -> tuple[int, int]:
        """The canvas the tiles cover: the image, padded up to one tile where it is smaller."""
        return max(self.height, self.tile_height), max(self.width, self.tile_width)


def _starts(size: int, tile: int, overlap: int) -> tuple[int, ...]:
    if size <= tile:
        return (0,)
    stride = tile - overlap
    count = math.ceil((size - tile) / stride) + 1
    # evenly spread: every overlap is >= the requested one, the last tile ends at the edge
    return tuple(round(float(v)) for v in np.linspace(0, size - tile, count))


def tile_grid(height: int, width: int, tile_height: int, tile_width: int, overlap: int) -> TileGrid:
    """The tile layout of a ``height`` x ``width`` image.

    Args:
        height, width: the image size.
        tile_height, tile_width: the model input size.
        overlap: the minimum overlap between neighbouring tiles (pixels).
    Returns:
        The grid; its tiles cover every pixel.
    """
    if min(height, width, tile_height, tile_width) < 1:
        raise InputValidationError(
            f"tiling needs positive sizes, got image {height}x{width} and tile {tile_height}x{tile_width}")
    if not 0 <= overlap < min(tile_height, tile_width):
        raise InputValidationError(
            f"tile overlap must be >= 0 and smaller than the tile ({tile_height}x{tile_width}), "
            f"got {overlap}", hint="lower tiling.overlap_px")
    return TileGrid(height, width, tile_height, tile_width,
                    _starts(height, tile_height, overlap), _starts(width, tile_width, overlap))


def cut_tiles(image: np.ndarray, grid: TileGrid) -> np.ndarray:
    """(T, tile_h, tile_w, ...) tiles of an (H, W, ...) image in the grid's order."""
    if image.shape[:2] != (grid.height, grid.width):
        raise InputValidationError(
            f"image is {image.shape[0]}x{image.shape[1]}, the tile grid was made for "
            f"{grid.height}x{grid.width}")
    pad_h, pad_w = grid.padded_shape[0] - grid.height, grid.padded_shape[1] - grid.width
    if pad_h or pad_w:
        image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_REFLECT_101)
    return np.stack([image[y : y + grid.tile_height, x : x + grid.tile_width] for y, x in grid.positions])


def _ramp(length: int, overlap: int) -> np.ndarray:
    index = np.arange(length, dtype=np.float64)
    distance = np.minimum(index + 0.5, length - index - 0.5)  # to the nearer tile edge
    return np.minimum(distance / max(overlap, 1), 1.0)


def blend_weights(tile_height: int, tile_width: int, overlap: int, blend: Blend | str) -> np.ndarray:
    """(tile_h, tile_w) float64 weights, > 0 everywhere so every covered pixel is defined."""
    blend = Blend(blend)
    if blend is Blend.UNIFORM:
        return np.ones((tile_height, tile_width))
    if blend is Blend.LINEAR:
        return np.outer(_ramp(tile_height, overlap), _ramp(tile_width, overlap))

    def bump(length: int) -> np.ndarray:
        x = np.arange(length) - (length - 1) / 2.0
        return np.exp(-0.5 * (x / (length / 8.0)) ** 2)  # ~3e-4 at the edges: no step there

    return np.outer(bump(tile_height), bump(tile_width))


def blend_tiles(tiles: np.ndarray, grid: TileGrid, weights: np.ndarray) -> np.ndarray:
    """Weighted average of overlapping tile outputs on the image canvas.

    Args:
        tiles: (T, tile_h, tile_w) or (T, C, tile_h, tile_w) outputs, one per grid tile.
        grid: the grid the tiles were cut with.
        weights: (tile_h, tile_w) from ``blend_weights``.
    Returns:
        (H, W) or (C, H, W) float32, cropped to the image (padding dropped).
    """
    expected = (grid.tile_height, grid.tile_width)
    if len(tiles) != grid.count or tiles.shape[-2:] != expected or weights.shape != expected:
        raise InputValidationError(
            f"blend needs {grid.count} tiles of {expected} and weights of {expected}, got tiles "
            f"{tiles.shape} and weights {weights.shape}")
    lead = tiles.shape[1:-2]
    acc = np.zeros((*lead, *grid.padded_shape), np.float64)
    total = np.zeros(grid.padded_shape, np.float64)
    for tile, (y, x) in zip(tiles, grid.positions):
        window = (..., slice(y, y + grid.tile_height), slice(x, x + grid.tile_width))
        acc[window] += tile * weights
        total[window] += weights
    out = acc / total
    return out[..., : grid.height, : grid.width].astype(np.float32)
