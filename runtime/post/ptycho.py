"""Ptychography post-processing: model outputs -> complex patches -> one stitched object.

Reassembly rules (``reassemble_patches`` / ``ObjectCanvas``):

- A scan offset ``(y, x)`` (float64, object pixels) is where the full P x P patch's top-left
  corner sits in the object. Only the centred M x M crop (``stitch_crop_size``) is used; it
  starts at patch index ``s = (P - M) // 2``.
- Sub-pixel offsets (``subpixel``):
  ``"fourier"`` (default): the offset is split into ``floor(offset)`` and a fraction
  ``f`` in [0, 1); the whole P x P patch is shifted by ``+f`` with a Fourier phase ramp
  (``exp(-2 pi i k f)``, separable in y and x), then cropped and placed with its corner at
  ``floor(offset) + s``. Shifting the full patch keeps the circular wrap of the shift in the
  discarded border. Patches whose fraction is exactly 0 are not transformed (bit exact).
  ``"round"``: the crop is placed at ``floor(offset + 0.5) + s`` (round half up), untouched.
- Overlaps are averaged: every placed pixel adds weight 1; the object is the accumulated sum
  divided by the accumulated weight. Pixels no patch covers are 0 and have weight 0.
- The object frame defaults to ``ceil(max offset) + P`` in each axis, so it is the same for
  every crop size; a crop falling outside the frame (or a negative offset) is refused.
- Patches are processed in batches of ``batch_size``: the working memory is the canvas
  (complex128 sum + float64 weight) plus one batch of patches, independent of the count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from batchforge.errors import ConfigError, InputValidationError

SUBPIXEL_MODES = ("fourier", "round")


@dataclass(frozen=True)
class PtychoOptions:
    """Options of the ptycho family (``spec.postprocess``)."""

    stitch_crop_size: int = 32
    stitch_batch_size: int = 256
    subpixel: str = "fourier"
    save_object: bool = True

    def __post_init__(self) -> None:
        for name in ("stitch_crop_size", "stitch_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"ptycho {name} must be an integer >= 1, got {value!r}")
        if self.subpixel not in SUBPIXEL_MODES:
            raise ConfigError(f"ptycho subpixel must be one of {SUBPIXEL_MODES}, got {self.subpixel!r}")


@dataclass(frozen=True)
class Reassembly:
    """A stitched object (complex64) and the accumulated weight (patches per pixel)."""

    object: np.ndarray
    weights: np.ndarray

    @property
    def covered(self) -> np.ndarray:
        return self.weights > 0


def complex_patches(amplitude: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """amplitude * exp(i * phase) as complex64 (same shape)."""
    if amplitude.shape != phase.shape:
        raise InputValidationError(f"amplitude and phase shapes differ: {amplitude.shape} vs {phase.shape}")
    amp = amplitude.astype(np.float32)
    ph = phase.astype(np.float32)
    return (amp * np.cos(ph) + 1j * (amp * np.sin(ph))).astype(np.complex64)


def check_patches(patches: np.ndarray) -> None:
    """Refuses anything but a (N, P, P) complex array."""
    if not isinstance(patches, np.ndarray):
        raise InputValidationError(f"expected patches as a numpy array, got {type(patches).__name__}")
    if patches.ndim != 3 or patches.shape[1] != patches.shape[2] or patches.shape[1] == 0:
        raise InputValidationError(f"expected patches of shape (N, P, P), got {patches.shape}")
    if not np.iscomplexobj(patches):
        raise InputValidationError(
            f"expected complex patches (complex64), got {patches.dtype}",
            hint="build them with complex_patches(amplitude, phase)")


def check_offsets(offsets: np.ndarray, count: int, first_index: int = 0) -> np.ndarray:
    """Validates (N, 2) scan offsets (y, x) and returns them as float64."""
    offsets = np.asarray(offsets)
    if offsets.ndim != 2 or offsets.shape[1] != 2:
        raise InputValidationError(f"expected scan offsets of shape (N, 2) as (y, x), got {offsets.shape}")
    if offsets.shape[0] != count:
        raise InputValidationError(
            f"expected one offset per patch: {count} patches but {offsets.shape[0]} offsets")
    if not np.issubdtype(offsets.dtype, np.number) or np.iscomplexobj(offsets):
        raise InputValidationError(f"expected real (float64) offsets, got {offsets.dtype}")
    offsets = offsets.astype(np.float64)
    bad = np.flatnonzero(~np.all(np.isfinite(offsets), axis=1))
    if bad.size:
        raise InputValidationError(
            f"expected finite scan offsets, got {offsets[bad[0]].tolist()} for patch "
            f"{first_index + int(bad[0])} ({bad.size} non-finite row(s))")
    return offsets


def default_object_shape(offsets: np.ndarray, patch_size: int) -> tuple[int, int]:
    """The object frame that holds every full patch: ``ceil(max offset) + P`` per axis."""
    offsets = check_offsets(offsets, len(offsets))
    if not len(offsets):
        return patch_size, patch_size
    top = np.ceil(offsets.max(axis=0)).astype(np.int64)
    return int(max(top[0], 0) + patch_size), int(max(top[1], 0) + patch_size)


def _fourier_crop(patches: np.ndarray, fraction: np.ndarray, start: int, size: int) -> np.ndarray:
    """Shifts each patch by ``+fraction`` (y, x) with Fourier ramps, then crops (separably)."""
    freq = np.fft.fftfreq(patches.shape[1])
    ramp_y = np.exp(-2j * np.pi * fraction[:, 0, None] * freq).astype(np.complex64)
    ramp_x = np.exp(-2j * np.pi * fraction[:, 1, None] * freq).astype(np.complex64)
    spectrum = np.fft.fft(patches, axis=1)
    spectrum *= ramp_y[:, :, None]  # in place: one (B, P, P) temporary less
    rows = np.fft.ifft(spectrum, axis=1)[:, start : start + size]  # only the crop's rows go on
    spectrum = np.fft.fft(rows, axis=2)
    spectrum *= ramp_x[:, None, :]
    return np.fft.ifft(spectrum, axis=2)[:, :, start : start + size]


class ObjectCanvas:
    """Accumulates patches into one object, batch by batch (memory: canvas + one batch).

    Use ``add`` any number of times (e.g. once per inference chunk), then ``result``.
    """

    def __init__(self, object_shape: Sequence[int], patch_size: int, crop_size: int, *,
                 batch_size: int = 256, subpixel: str = "fourier") -> None:
        shape = tuple(int(v) for v in object_shape)
        if len(shape) != 2 or min(shape) < 1:
            raise InputValidationError(
                f"expected a positive (height, width) object shape, got {object_shape}")
        if not 1 <= crop_size <= patch_size:
            raise InputValidationError(
                f"stitch_crop_size must be between 1 and the patch size {patch_size}, got {crop_size}")
        if batch_size < 1 or subpixel not in SUBPIXEL_MODES:
            raise InputValidationError(f"expected batch_size >= 1 and subpixel in {SUBPIXEL_MODES}, "
                                       f"got {batch_size} and {subpixel!r}")
        self.shape = shape
        self.patch_size = patch_size
        self.crop_size = crop_size
        self.start = (patch_size - crop_size) // 2
        self.batch_size = batch_size
        self.subpixel = subpixel
        self.count = 0
        self._sum = np.zeros(shape, np.complex128)
        self._weight = np.zeros(shape, np.float64)

    def add(self, patches: np.ndarray, offsets: np.ndarray) -> None:
        """Adds (N, P, P) complex patches at (N, 2) float offsets (y, x)."""
        check_patches(patches)
        if patches.shape[1] != self.patch_size:
            raise InputValidationError(
                f"expected {self.patch_size}x{self.patch_size} patches, got {patches.shape[1:]}")
        offsets = check_offsets(offsets, len(patches), self.count)
        for lo in range(0, len(patches), self.batch_size):
            hi = min(lo + self.batch_size, len(patches))
            self._add_batch(patches[lo:hi], offsets[lo:hi])

    def _add_batch(self, patches: np.ndarray, offsets: np.ndarray) -> None:
        size, start = self.crop_size, self.start
        if self.subpixel == "round":
            corner = np.floor(offsets + 0.5).astype(np.int64)
            crops = patches[:, start : start + size, start : start + size]
        else:
            corner = np.floor(offsets).astype(np.int64)
            fraction = offsets - corner
            crops = patches[:, start : start + size, start : start + size].astype(np.complex64)
            moved = np.flatnonzero(np.any(fraction != 0, axis=1))
            if moved.size:  # astype above copied, so the caller's patches stay untouched
                crops[moved] = _fourier_crop(patches[moved].astype(np.complex64), fraction[moved],
                                             start, size)
        corner = corner + start
        self._check_bounds(corner)
        total, weight = self._sum, self._weight
        for (y, x), crop in zip(corner.tolist(), crops):
            total[y : y + size, x : x + size] += crop
            weight[y : y + size, x : x + size] += 1.0
        self.count += len(patches)

    def _check_bounds(self, corner: np.ndarray) -> None:
        limit = np.array(self.shape) - self.crop_size
        outside = np.flatnonzero(np.any((corner < 0) | (corner > limit), axis=1))
        if outside.size:
            i = int(outside[0])
            raise InputValidationError(
                f"patch {self.count + i}: its {self.crop_size}x{self.crop_size} crop would start at "
                f"(y, x) = {tuple(corner[i].tolist())}, outside the {self.shape[0]}x{self.shape[1]} "
                f"object (expected 0 <= start <= {tuple(limit.tolist())})",
                hint="offsets must be >= 0; pass a larger object shape or omit it")

    def result(self) -> Reassembly:
        """The averaged object (complex64; uncovered pixels 0) and the weights."""
        covered = self._weight > 0
        obj = np.zeros(self.shape, np.complex64)
        obj[covered] = self._sum[covered] / self._weight[covered]
        return Reassembly(obj, self._weight.copy())


def reassemble_patches(patches: np.ndarray, offsets: np.ndarray, crop_size: int, *,
                       object_shape: Sequence[int] | None = None, batch_size: int = 256,
                       subpixel: str = "fourier") -> Reassembly:
    """Stitches complex patches placed at float64 scan offsets into one object.

    Args:
        patches: (N, P, P) complex64 patches.
        offsets: (N, 2) float64 (y, x) positions of each patch's top-left corner.
        crop_size: M, the centred crop of each patch that is used.
        object_shape: the object frame; default ``default_object_shape(offsets, P)``.
        batch_size: patches processed at once (memory bound; the result does not depend on it
            beyond floating-point summation order).
        subpixel: "fourier" or "round" (see the module docstring).
    Returns:
        A Reassembly (object complex64, weights float64).
    """
    check_patches(patches)
    offsets = check_offsets(offsets, len(patches))
    shape = object_shape if object_shape is not None else default_object_shape(offsets, patches.shape[1])
    canvas = ObjectCanvas(shape, patches.shape[1], crop_size, batch_size=batch_size, subpixel=subpixel)
    canvas.add(patches, offsets)
    return canvas.result()
