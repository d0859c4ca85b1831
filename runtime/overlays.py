"""``run --overlays DIR``: each input image with what the model found drawn on it (PNG), for a
person to check: boxes and landmarks (mtcnn, detector, facepose), keypoints (keypoints).

Drawn with OpenCV on the original image (read again from its file), in original pixels. Each
overlay is written to a temporary file in DIR and renamed when complete, named after its input
(``<stem>.png``, ``<stem>_2.png`` for a repeated stem) and checked to stay inside DIR.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import cv2
import numpy as np

from batchforge.errors import UsageError
from batchforge.runtime.artifacts import atomic_path
from batchforge.runtime.images import read_image, write_image
from batchforge.runtime.results import Result
from batchforge.safe_paths import inside

OVERLAY_FAMILIES = ("mtcnn", "detector", "facepose", "keypoints")
BOX_COLOUR, POINT_COLOUR = (0, 255, 0), (255, 0, 0)  # RGB


def shapes_of(result: Result) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(boxes (K, 4) xyxy, points (N, 2), labels per box) of a result, in original pixels."""
    boxes = np.asarray(getattr(result, "boxes", np.zeros((0, 4))), np.float64).reshape(-1, 4)
    if hasattr(result, "keypoints"):  # keypoints: one instance, its box if it came with one
        box = getattr(result, "box", None)
        boxes = np.asarray([box], np.float64) if box is not None else np.zeros((0, 4))
        return boxes, np.asarray(result.keypoints, np.float64).reshape(-1, 2), [""] * len(boxes)
    points = np.asarray(getattr(result, "landmarks", np.zeros((0, 2))), np.float64).reshape(-1, 2)
    scores = getattr(result, "probs", getattr(result, "scores", np.zeros(len(boxes))))
    names = getattr(result, "class_names", ())
    labels = [f"{names[i] + ' ' if i < len(names) else ''}{float(s):.2f}" for i, s in enumerate(scores)]
    return boxes, points, labels


def draw(image: np.ndarray, boxes: np.ndarray, points: np.ndarray, labels: list[str]) -> np.ndarray:
    """A copy of the RGB image with boxes, labels and points drawn (line width follows its size)."""
    canvas = np.ascontiguousarray(image.copy())
    width = max(1, round(max(image.shape[:2]) / 400))
    for box, label in zip(boxes, labels):
        x0, y0, x1, y1 = (round(v) for v in box)
        cv2.rectangle(canvas, (x0, y0), (x1, y1), BOX_COLOUR, width)
        if label:
            cv2.putText(canvas, label, (x0, max(y0 - 3 * width, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * width,
                        BOX_COLOUR, width)
    for x, y in points:
        cv2.circle(canvas, (round(x), round(y)), 2 * width, POINT_COLOUR, -1)
    return canvas


class OverlayWriter:
    """Writes one overlay PNG per result with an image source into ``folder``."""

    def __init__(self, folder: str | os.PathLike[str], family: str) -> None:
        if family not in OVERLAY_FAMILIES:
            raise UsageError(f"--overlays draws {', '.join(OVERLAY_FAMILIES)} results; this model is family "
                             f"{family!r}", hint="drop --overlays for it")
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise UsageError(f"--overlays {folder}: expected a folder, got a file",
                             hint="name a new or existing folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._used: set[str] = set()
        self.written = 0

    def write(self, result: Result) -> Path | None:
        """The overlay of one result (None for an error record)."""
        if result.to_record().get("ok") is False:
            return None
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(result.source).stem) or "image"
        name, n = f"{stem}.png", 1
        while name in self._used:
            n += 1
            name = f"{stem}_{n}.png"
        self._used.add(name)
        path = inside(self.folder, self.folder / name, "overlay")
        canvas = draw(read_image(result.source), *shapes_of(result))
        with atomic_path(path, suffix=".png") as tmp:
            write_image(tmp, canvas)
        self.written += 1
        return path
