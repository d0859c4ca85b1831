"""Generates the 68-point 3D face reference used by the facepose family's landmark projection.

    python scripts/make_face_reference.py            # writes runtime/data/face_reference_68.npy
    python scripts/make_face_reference.py --check    # exit 1 if the shipped file differs

The points follow the iBUG/Multi-PIE 68-landmark layout (jaw 0-16, eyebrows 17-26, nose 27-35,
eyes 36-47, outer lips 48-59, inner lips 60-67), "left" meaning the image's left for a face
looking at the camera. They are built from simple curves with average adult proportions (face
width at the jaw ~0.14 m), not fitted to scans: enough for a deterministic, plausible
projection, and reproducible from this file alone.

Frame: metres, x to the image's right, y down, z away from the camera (the nose tip has the
smallest z); the origin is the centroid of the 68 points.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

OUTPUT = Path(__file__).resolve().parents[1] / "runtime" / "data" / "face_reference_68.npy"


def _jaw() -> np.ndarray:
    phi = np.linspace(0.0, np.pi, 17)  # point 0 at the left ear, 8 at the chin, 16 at the right ear
    return np.stack([-0.070 * np.cos(phi), -0.010 + 0.090 * np.sin(phi),
                     0.070 * (1.0 - np.sin(phi)) + 0.010], axis=1)


def _brow(side: float) -> np.ndarray:
    t = np.linspace(0.0, 1.0, 5)
    x = side * (0.062 - 0.048 * t) if side < 0 else 0.014 + 0.048 * t
    arch = np.sin(np.pi * (t if side < 0 else 1.0 - t) * 0.9 + 0.15)
    return np.stack([x, -0.040 - 0.008 * arch, 0.006 + 0.020 * (np.abs(x) / 0.062) ** 2], axis=1)


def _nose() -> np.ndarray:
    bridge = np.stack([np.zeros(4), np.linspace(-0.030, 0.004, 4), np.linspace(0.000, -0.028, 4)], axis=1)
    x = np.linspace(-0.015, 0.015, 5)
    base = np.stack([x, 0.014 - 0.003 * np.cos(np.pi * x / 0.030), -0.010 + 0.012 * np.abs(x) / 0.015],
                    axis=1)
    return np.concatenate([bridge, base])


def _eye(centre_x: float) -> np.ndarray:
    a, b, cy = 0.014, 0.005, -0.022
    # left eye: outer corner, two upper, inner corner, two lower; the right eye starts inner
    dx = np.array([-a, -a / 3, a / 3, a, a / 3, -a / 3])
    dy = np.array([0.0, -b, -b, 0.0, b, b])
    x = centre_x + dx
    return np.stack([x, cy + dy, 0.010 + 0.010 * (np.abs(x) / 0.046) ** 2], axis=1)


def _lips(count: int, half_width: float, half_height: float, centre_y: float) -> np.ndarray:
    # from the left corner along the upper lip to the right corner, back along the lower lip
    theta = np.pi + np.arange(count) * (2.0 * np.pi / count)
    x = half_width * np.cos(theta)
    return np.stack([x, centre_y + half_height * np.sin(theta), 0.004 + 0.012 * (x / 0.025) ** 2], axis=1)


def face_reference() -> np.ndarray:
    """The (68, 3) float64 reference, centred on its centroid."""
    points = np.concatenate([
        _jaw(), _brow(-1.0), _brow(1.0), _nose(), _eye(-0.032), _eye(0.032),
        _lips(12, 0.025, 0.011, 0.045), _lips(8, 0.018, 0.004, 0.045),
    ])
    assert points.shape == (68, 3)
    return points - points.mean(axis=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the shipped file instead")
    args = parser.parse_args(argv)
    points = face_reference()
    if args.check:
        same = OUTPUT.is_file() and np.array_equal(np.load(OUTPUT), points)
        print(f"{OUTPUT}: {'up to date' if same else 'differs from the generator: rerun without --check'}")
        return 0 if same else 1
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    np.save(OUTPUT, points, allow_pickle=False)
    print(f"wrote {OUTPUT} ({points.shape[0]} points, width {np.ptp(points[:, 0]):.3f} m)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
