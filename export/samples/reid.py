"""Synthetic re-identification data: "identities" drawn as shapes and textures, seen in views.

An identity is a seeded scene (background gradient, a body of coloured ellipses/polygons and a
stripe texture); a view re-renders it with a small affine jitter, lighting change and noise,
so a query view is closest to its own identity's gallery view for any reasonable embedder.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

SIZES = ((256, 192), (224, 224), (288, 224), (240, 320))  # (H, W): exercise resizing


def _identity_rng(identity: int, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, identity, 0])


def render_identity(identity: int, view: int, seed: int) -> np.ndarray:
    """One RGB uint8 view of one identity."""
    rng = _identity_rng(identity, seed)
    height, width = SIZES[identity % len(SIZES)]
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    canvas = (top * (1 - ramp) + bottom * ramp) * np.ones((1, width, 1), np.float32)
    canvas = canvas.astype(np.uint8)
    for _ in range(int(rng.integers(3, 7))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        centre = (int(rng.integers(width // 5, 4 * width // 5)), int(rng.integers(height // 6, 5 * height // 6)))
        axes = (int(rng.integers(width // 10, width // 3)), int(rng.integers(height // 10, height // 3)))
        if rng.random() < 0.6:
            cv2.ellipse(canvas, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
        else:
            pts = rng.integers([0, 0], [width, height], size=(int(rng.integers(3, 6)), 2))
            cv2.fillPoly(canvas, [pts.astype(np.int32)], colour)
    period = float(rng.uniform(6, 24))
    angle = float(rng.uniform(0, np.pi))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    canvas = np.clip(canvas.astype(np.float32) + 25.0 * stripes[:, :, None], 0, 255)

    view_rng = np.random.default_rng([seed, identity, view + 1])
    if view:
        scale = float(view_rng.uniform(0.9, 1.1))
        matrix = cv2.getRotationMatrix2D((width / 2, height / 2), float(view_rng.uniform(-8, 8)), scale)
        matrix[:, 2] += view_rng.uniform(-0.06, 0.06, 2) * (width, height)
        canvas = cv2.warpAffine(canvas, matrix, (width, height), borderMode=cv2.BORDER_REFLECT)
        gain, bias = float(view_rng.uniform(0.85, 1.15)), float(view_rng.uniform(-15, 15))
        canvas = canvas * gain + bias
    canvas = canvas + view_rng.normal(0.0, 3.0, canvas.shape)
    return np.clip(np.round(canvas), 0, 255).astype(np.uint8)


def sample_images(count: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """``count`` images: identities 0..count//2 each seen in two views."""
    out = []
    for index in range(count):
        identity, view = divmod(index, 2)
        out.append((f"id{identity:04d}_view{view}", render_identity(identity, view, seed)))
    return out


@dataclass(frozen=True)
class RetrievalSet:
    """Gallery views (view 0 of each identity) and query views (view 1 of the first ones)."""

    gallery: list[np.ndarray]
    gallery_labels: list[str]
    queries: list[np.ndarray]
    query_labels: list[str]


def retrieval_set(n_query: int, n_gallery: int, seed: int) -> RetrievalSet:
    """A deterministic query/gallery split; query i's true match is gallery item i."""
    if n_query > n_gallery:
        raise ValueError(f"need n_query <= n_gallery, got {n_query} > {n_gallery}")
    labels = [f"id{i:04d}" for i in range(n_gallery)]
    return RetrievalSet(
        gallery=[render_identity(i, 0, seed) for i in range(n_gallery)],
        gallery_labels=labels,
        queries=[render_identity(i, 1, seed) for i in range(n_query)],
        query_labels=labels[:n_query],
    )
