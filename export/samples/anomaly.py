"""Synthetic industrial-inspection data: one woven "product" texture, good or with defects.

Every image shows the same product (a woven texture: two crossed gratings with a thread
pattern) at a fixed pixel scale, with per-image jitter in phase, orientation, thread period,
lighting and sensor noise, so "good" is a distribution and not one picture. Defective images
add one to three defects, each with its ground-truth mask:

- ``scratch``: a thin dark or bright line, 1-3 px wide and 30-110 px long;
- ``blob``: a soft-edged stain (colour shift) 6-18 px across;
- ``missing``: a patch where the weave is missing (flat, slightly noisy background).

The scale does not depend on the image size, so a tiled large image looks like its 256 px
tiles. Nothing here needs torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

DEFECT_KINDS = ("scratch", "blob", "missing")
BASE_COLOUR = np.array([150.0, 128.0, 96.0], np.float32)  # a tan fabric
MODEL_SIZE = (256, 256)
LARGE_SIZE = (320, 512)  # exercises tiling in `batchforge run`


@dataclass(frozen=True)
class AnomalySample:
    """One image with its ground truth: ``mask`` is True on defect pixels."""

    name: str
    image: np.ndarray
    mask: np.ndarray
    kinds: tuple[str, ...]

    @property
    def is_defective(self) -> bool:
        return bool(self.kinds)


def render_good(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A defect-free woven texture as float32 RGB (0..255 scale, not clipped)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = float(rng.uniform(-0.05, 0.05))
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    period = float(rng.uniform(9.0, 11.0))
    phase_u, phase_v = rng.uniform(0, 2 * np.pi, 2)
    warp = np.sin(2 * np.pi * u / period + phase_u)
    weft = np.sin(2 * np.pi * v / period + phase_v)
    # threads cross over and under: the sign of the product picks which one is on top
    weave = np.where(warp * weft > 0, warp, weft)
    fine = np.sin(2 * np.pi * (u + v) / (period / 3.0) + float(rng.uniform(0, 2 * np.pi)))
    texture = 28.0 * weave + 6.0 * fine
    gain = float(rng.uniform(0.9, 1.1))
    shade = BASE_COLOUR * gain + rng.normal(0.0, 3.0, 3).astype(np.float32)
    image = shade[None, None, :] + texture[:, :, None]
    return image + rng.normal(0.0, 4.0, image.shape).astype(np.float32)


def _scratch(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> None:
    height, width = mask.shape
    length = float(rng.uniform(30, 110))
    angle = float(rng.uniform(0, np.pi))
    cx, cy = rng.uniform(0.15, 0.85) * width, rng.uniform(0.15, 0.85) * height
    dx, dy = 0.5 * length * np.cos(angle), 0.5 * length * np.sin(angle)
    p0 = (round(cx - dx), round(cy - dy))
    p1 = (round(cx + dx), round(cy + dy))
    layer = np.zeros((height, width), np.uint8)
    cv2.line(layer, p0, p1, 255, int(rng.integers(1, 4)), cv2.LINE_8)
    value = 40.0 if rng.random() < 0.5 else 235.0
    on = layer > 0
    image[on] = value + rng.normal(0.0, 4.0, (int(on.sum()), 3))
    mask |= on


def _blob(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> None:
    height, width = mask.shape
    centre = (int(rng.uniform(0.1, 0.9) * width), int(rng.uniform(0.1, 0.9) * height))
    axes = (int(rng.integers(4, 10)), int(rng.integers(4, 10)))
    layer = np.zeros((height, width), np.float32)
    cv2.ellipse(layer, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
    soft = cv2.GaussianBlur(layer, (0, 0), 1.5)
    stain = np.array([-70.0, -40.0, 30.0], np.float32) * float(rng.choice([-1.0, 1.0]))
    image += soft[:, :, None] * stain[None, None, :]
    mask |= soft > 0.5


def _missing(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> None:
    height, width = mask.shape
    h, w = int(rng.integers(14, 36)), int(rng.integers(14, 36))
    y, x = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
    flat = image.reshape(-1, 3).mean(axis=0)
    image[y : y + h, x : x + w] = flat + rng.normal(0.0, 4.0, (h, w, 3))
    mask[y : y + h, x : x + w] = True


DEFECT_PAINTERS = {"scratch": _scratch, "blob": _blob, "missing": _missing}


def render_sample(index: int, seed: int, defective: bool,
                  size: tuple[int, int] = MODEL_SIZE) -> AnomalySample:
    """One deterministic sample; defective ones get 1-3 defects of random kinds."""
    rng = np.random.default_rng([seed, index])
    height, width = size
    image = render_good(height, width, rng)
    mask = np.zeros((height, width), bool)
    kinds: list[str] = []
    if defective:
        for _ in range(int(rng.integers(1, 4))):
            kind = DEFECT_KINDS[int(rng.integers(0, len(DEFECT_KINDS)))]
            DEFECT_PAINTERS[kind](image, mask, rng)
            kinds.append(kind)
    pixels = np.clip(np.round(image), 0, 255).astype(np.uint8)
    name = f"{index:04d}_" + ("-".join(kinds) if kinds else "good")
    return AnomalySample(name, pixels, mask, tuple(kinds))


def good_images(count: int, seed: int) -> list[np.ndarray]:
    """``count`` defect-free 256x256 images (what the model is fitted on)."""
    return [render_sample(i, seed, defective=False).image for i in range(count)]


def labelled_set(count: int, seed: int, size: tuple[int, int] = MODEL_SIZE) -> list[AnomalySample]:
    """``count`` samples, alternately good (even index) and defective (odd index)."""
    return [render_sample(i, seed, defective=i % 2 == 1, size=size) for i in range(count)]


def sample_images(count: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """Good and defective images; every fifth one is 320x512 so `run` exercises tiling."""
    out = []
    for index in range(count):
        size = LARGE_SIZE if index % 5 == 4 else MODEL_SIZE
        sample = render_sample(index, seed, defective=index % 2 == 1, size=size)
        out.append((sample.name, sample.image))
    return out
