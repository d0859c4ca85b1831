"""A small ptychography simulator: object x probe -> |FFT|^2 at float64 scan positions.

The demo data is a known complex object (smooth amplitude in [0.35, 1] with a few disks, smooth
phase within about +-1.2 rad), a Gaussian probe with a defocus phase, a raster scan with seeded
sub-pixel jitter (float64 offsets of each patch's top-left corner, (y, x)), and the diffraction
amplitudes ``sqrt(|fftshift(fft2(probe * object patch, norm="ortho"))|^2)`` as float32,
noise-free or with seeded Poisson noise at a given photon count.

The object under a patch at a sub-pixel offset is sampled with a Fourier shift of the integer
window (the probe is ~0 at the window border, so the shift's circular wrap does not matter).

``python scripts/make_ptycho_scan.py OUT.npz`` writes a demo scan for ``batchforge run ptycho``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

PATCH = 64
PROBE_SIGMA = 8.0  # px; the probe is ~3e-4 of its peak at the patch border
STEP = 8.0
GRID = 12


@dataclass(frozen=True)
class SimulatedScan:
    """A simulated scan and its ground truth."""

    diffraction: np.ndarray  # (N, P, P) float32 amplitudes, DC at the centre
    offsets: np.ndarray  # (N, 2) float64 (y, x) top-left corners of the patches
    object_shape: tuple[int, int]
    obj: np.ndarray  # complex64 ground truth (object_shape)
    probe: np.ndarray  # complex64 (P, P)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    coarse = rng.normal(size=(cells, cells)).astype(np.float32)
    field = cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    return (field - field.mean()) / (field.std() + 1e-12)


def make_object(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A complex64 test object of the given (H, W)."""
    rng = np.random.default_rng([seed, 1])
    amplitude = 0.7 + 0.12 * _smooth_field(rng, shape, 7)
    phase = 0.45 * _smooth_field(rng, shape, 5)
    for _ in range(6):
        centre = (int(rng.integers(0, shape[1])), int(rng.integers(0, shape[0])))
        radius = int(rng.integers(4, 12))
        mask = np.zeros(shape, np.uint8)
        cv2.circle(mask, centre, radius, 1, -1, cv2.LINE_AA)
        amplitude -= 0.2 * mask
        phase += float(rng.uniform(-0.6, 0.6)) * mask
    amplitude = np.clip(amplitude, 0.35, 1.0)
    phase = np.clip(phase, -1.2, 1.2)
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


def make_probe(size: int = PATCH, sigma: float = PROBE_SIGMA, defocus: float = 0.02) -> np.ndarray:
    """A Gaussian probe (peak amplitude 1) with a quadratic (defocus) phase."""
    coords = np.arange(size) - (size - 1) / 2
    r2 = coords[:, None] ** 2 + coords[None, :] ** 2
    return (np.exp(-r2 / (2 * sigma**2)) * np.exp(1j * defocus * r2)).astype(np.complex64)


def scan_offsets(grid: int, step: float, jitter: float, seed: int) -> np.ndarray:
    """(grid*grid, 2) float64 raster offsets (y, x) with uniform jitter, all >= 0."""
    rng = np.random.default_rng([seed, 2])
    yy, xx = np.meshgrid(np.arange(grid) * step, np.arange(grid) * step, indexing="ij")
    offsets = np.stack([yy.ravel(), xx.ravel()], axis=1) + jitter
    offsets += rng.uniform(-jitter, jitter, offsets.shape)
    return offsets


def object_window(obj: np.ndarray, offset: np.ndarray, size: int) -> np.ndarray:
    """The object sampled at ``offset + (0..size-1)`` (Fourier shift of the integer window)."""
    corner = np.floor(offset).astype(int)
    fraction = offset - corner
    window = obj[corner[0] : corner[0] + size, corner[1] : corner[1] + size].astype(np.complex128)
    freq = np.fft.fftfreq(size)
    ramp = np.exp(2j * np.pi * (fraction[0] * freq[:, None] + fraction[1] * freq[None, :]))
    return np.fft.ifft2(np.fft.fft2(window) * ramp)


def diffraction_amplitude(exit_wave: np.ndarray, photons: float | None = None,
                          rng: np.random.Generator | None = None) -> np.ndarray:
    """|FFT|, DC centred; with ``photons``, Poisson noise on the intensity (seeded ``rng``)."""
    intensity = np.abs(np.fft.fftshift(np.fft.fft2(exit_wave, norm="ortho"))) ** 2
    if photons is not None:
        assert rng is not None, "Poisson noise needs a seeded generator"
        scale = photons / intensity.sum()
        intensity = rng.poisson(intensity * scale) / scale
    return np.sqrt(intensity).astype(np.float32)


def simulate_scan(seed: int, grid: int = GRID, step: float = STEP, jitter: float = 1.0,
                  photons: float | None = None) -> SimulatedScan:
    """A full simulated scan (see the module docstring)."""
    offsets = scan_offsets(grid, step, jitter, seed)
    extent = int(np.ceil((grid - 1) * step + 2 * jitter)) + PATCH
    shape = (extent, extent)
    obj = make_object(shape, seed)
    probe = make_probe()
    rng = np.random.default_rng([seed, 3])
    patterns = [diffraction_amplitude(probe * object_window(obj, off, PATCH), photons, rng)
                for off in offsets]
    return SimulatedScan(np.stack(patterns), offsets, shape, obj, probe)


def sample_patterns(count: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """``count`` single diffraction amplitudes (P, P) float32 from one simulated scan."""
    grid = max(2, int(np.ceil(np.sqrt(count))))
    scan = simulate_scan(seed, grid=grid)
    return [(f"pattern{i:05d}", scan.diffraction[i]) for i in range(count)]


def write_scan(path: str | Path, scan: SimulatedScan) -> Path:
    """Writes the scan file ``batchforge run ptycho`` reads (+ the ground truth, for reference)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, diffraction=scan.diffraction, offsets=scan.offsets,
             object_shape=np.array(scan.object_shape, np.int64), true_object=scan.obj,
             probe=scan.probe)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a simulated ptychography scan (.npz).")
    parser.add_argument("out", help="output .npz path")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--grid", type=int, default=GRID, help="scan positions per axis")
    parser.add_argument("--step", type=float, default=STEP, help="scan step in object pixels")
    parser.add_argument("--photons", type=float, help="Poisson noise at this photon count per pattern")
    args = parser.parse_args(argv)
    scan = simulate_scan(args.seed, grid=args.grid, step=args.step, photons=args.photons)
    path = write_scan(args.out, scan)
    print(f"wrote {len(scan.offsets)} diffraction patterns, object {scan.object_shape} -> {path}")
    return 0

