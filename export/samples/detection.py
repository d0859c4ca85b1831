"""Synthetic detection data: scenes with objects, and scenes with face-like blobs.

Images come in several sizes and aspect ratios (landscape, portrait, square, large) so the
letterbox and its inverse are exercised, and images of different sizes share batches. Every
image is a pure function of ``(seed, index)``.
"""

from __future__ import annotations

import cv2
import numpy as np

SIZES = ((480, 640), (640, 480), (720, 1280), (512, 512), (375, 500), (600, 800), (900, 700))  # (H, W)
SKIN_TONES = ((224, 172, 140), (198, 134, 94), (141, 85, 54), (241, 194, 165), (110, 70, 45))


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth two-colour gradient with low-frequency blotches."""
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    canvas = (top * (1 - ramp) + bottom * ramp) * np.ones((1, width, 1), np.float32)
    blotches = cv2.resize(rng.normal(0.0, 30.0, (6, 8, 3)).astype(np.float32), (width, height),
                          interpolation=cv2.INTER_CUBIC)
    return canvas + blotches


def _finish(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    canvas = canvas + rng.normal(0.0, 4.0, canvas.shape)
    return np.clip(np.round(canvas), 0, 255).astype(np.uint8)


def _draw_object(rng: np.random.Generator, canvas: np.ndarray) -> None:
    height, width = canvas.shape[:2]
    size = float(np.exp(rng.uniform(np.log(0.05), np.log(0.45)))) * min(height, width)
    aspect = float(np.exp(rng.uniform(-0.7, 0.7)))
    w, h = size * aspect, size / aspect
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    colour = tuple(float(c) for c in rng.integers(0, 256, 3))
    kind = rng.integers(0, 3)
    if kind == 0:
        corner0, corner1 = (int(cx - w / 2), int(cy - h / 2)), (int(cx + w / 2), int(cy + h / 2))
        cv2.rectangle(canvas, corner0, corner1, colour, -1)
    elif kind == 1:
        cv2.ellipse(canvas, (int(cx), int(cy)), (int(w / 2), int(h / 2)), float(rng.uniform(0, 180)),
                    0, 360, colour, -1)
    else:
        angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 7))))
        pts = np.stack([cx + w / 2 * np.cos(angles), cy + h / 2 * np.sin(angles)], axis=1)
        cv2.fillPoly(canvas, [pts.astype(np.int32)], colour)
    if rng.random() < 0.5:  # a textured object: stripes inside its box
        x0, x1 = int(max(cx - w / 2, 0)), int(min(cx + w / 2, width))
        y0, y1 = int(max(cy - h / 2, 0)), int(min(cy + h / 2, height))
        if x1 > x0 and y1 > y0:
            xx = np.arange(x0, x1, dtype=np.float32)[None, :, None]
            canvas[y0:y1, x0:x1] += 30.0 * np.sin(xx * 2 * np.pi / rng.uniform(4, 16))


def object_image(index: int, seed: int) -> np.ndarray:
    """One RGB uint8 scene with 2-9 objects."""
    rng = np.random.default_rng([seed, index, 31])
    height, width = SIZES[index % len(SIZES)]
    canvas = _background(rng, height, width)
    for _ in range(int(rng.integers(2, 10))):
        _draw_object(rng, canvas)
    return _finish(rng, canvas)


def _draw_face(rng: np.random.Generator, canvas: np.ndarray) -> None:
    height, width = canvas.shape[:2]
    size = float(np.exp(rng.uniform(np.log(0.06), np.log(0.4)))) * min(height, width)  # face width
    cx, cy = rng.uniform(size / 2, width - size / 2), rng.uniform(size / 2, height - size / 2)
    angle = float(rng.uniform(-25, 25))
    turn = float(rng.uniform(-0.25, 0.25)) * size  # a turned head: features shift sideways
    skin = np.array(SKIN_TONES[int(rng.integers(0, len(SKIN_TONES)))], np.float32) + rng.normal(0, 8, 3)
    rot = cv2.getRotationMatrix2D((0.0, 0.0), angle, 1.0)[:, :2]

    def at(dx: float, dy: float) -> tuple[int, int]:
        x, y = rot @ np.array([dx, dy])
        return int(cx + x), int(cy + y)

    def ellipse(dx: float, dy: float, ax: float, ay: float, colour) -> None:
        cv2.ellipse(canvas, at(dx, dy), (max(int(ax), 1), max(int(ay), 1)), -angle, 0, 360,
                    tuple(float(c) for c in colour), -1)

    ellipse(0, 0, size / 2, size * 0.65, skin)
    dark = skin * 0.25
    for side in (-1, 1):
        ellipse(turn * 0.4 + side * size * 0.2, -size * 0.12, size * 0.08, size * 0.04, dark)
        ellipse(turn * 0.4 + side * size * 0.2, -size * 0.25, size * 0.11, size * 0.02, dark)
    ellipse(turn * 0.6, size * 0.06, size * 0.04, size * 0.1, skin * 0.8)
    ellipse(turn * 0.4, size * 0.3, size * 0.16, size * 0.045, (150 + rng.normal(0, 10), 60, 60))


def face_image(index: int, seed: int) -> np.ndarray:
    """One RGB uint8 scene with 1-5 face-like blobs (and a distractor object or two)."""
    rng = np.random.default_rng([seed, index, 67])
    height, width = SIZES[index % len(SIZES)]
    canvas = _background(rng, height, width)
    for _ in range(int(rng.integers(0, 3))):
        _draw_object(rng, canvas)
    for _ in range(int(rng.integers(1, 6))):
        _draw_face(rng, canvas)
    return _finish(rng, canvas)


def object_images(count: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """``count`` object scenes named ``det0000``, ``det0001``, ..."""
    return [(f"det{i:04d}", object_image(i, seed)) for i in range(count)]


def face_images(count: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """``count`` face scenes named ``face0000``, ``face0001``, ..."""
    return [(f"face{i:04d}", face_image(i, seed)) for i in range(count)]
