"""Dense detection post-processing in NumPy, shared by the detector and facepose families.

Engine outputs per image (no NMS in the graph, so the batch axis stays dynamic):

- ``boxes`` (N, 4): distances (left, top, right, bottom) from each anchor point to the box
  edges, in units of the anchor's stride;
- ``scores`` (N, C): class probabilities (sigmoid already applied).

The N anchor points are the centres of the cells of every level, level by level in ``strides``
order, each level row-major: point ``(x + 0.5, y + 0.5) * stride`` in model-input pixels.

Steps per image: score threshold (``score > score_threshold``) -> at most ``pre_nms_top_k``
candidates by score -> box decoding -> class-aware NMS (``runtime.post.nms``, same indices as
torchvision) -> boxes mapped back to the original image through the letterbox inverse
(``runtime.preprocess.Geometry``) and clipped to it -> boxes left empty by the clipping (wholly
in the letterbox padding) dropped -> the best ``max_detections``. Ties in score keep the
lower candidate index first (candidates are numbered location-major, then class).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from batchforge.errors import ConfigError, InputValidationError
from batchforge.runtime.post.nms import batched_nms
from batchforge.runtime.preprocess import Geometry


@dataclass(frozen=True)
class DetectionOptions:
    """Post-processing options of the dense detector families (``spec.postprocess``).

    ``class_names`` fixes the width of the ``scores`` output; ``strides`` the anchor grid.
    """

    class_names: tuple[str, ...] = ("object",)
    strides: tuple[int, ...] = (8, 16, 32)
    score_threshold: float = 0.25
    iou_threshold: float = 0.45
    pre_nms_top_k: int = 3000
    max_detections: int = 100

    def __post_init__(self) -> None:
        problems = []
        if not self.class_names or not all(isinstance(n, str) and n for n in self.class_names):
            problems.append(f"class_names must be non-empty strings, got {self.class_names!r}")
        if not self.strides or not all(isinstance(s, int) and s > 0 for s in self.strides):
            problems.append(f"strides must be positive integers, got {self.strides!r}")
        for name in ("score_threshold", "iou_threshold"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                problems.append(f"{name} must be in [0, 1], got {value!r}")
        for name in ("pre_nms_top_k", "max_detections"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be an integer >= 1, got {value!r}")
        if problems:
            raise ConfigError("invalid detection options", problems=problems)


@dataclass(frozen=True)
class AnchorGrid:
    """Anchor points (N, 2) and their strides (N,), float32, in model-input pixels."""

    points: np.ndarray
    strides: np.ndarray

    def __len__(self) -> int:
        return len(self.strides)


def anchor_grid(height: int, width: int, strides: tuple[int, ...]) -> AnchorGrid:
    """The anchor points of a model input of ``height`` x ``width`` (see the module docstring).

    Raises ConfigError when a stride does not divide the input size (the levels would not
    line up with the feature maps).
    """
    points, per_point = [], []
    for stride in strides:
        if height % stride or width % stride:
            raise ConfigError(f"input {height}x{width} is not a multiple of stride {stride}",
                              hint="use an input size divisible by every stride")
        ys, xs = np.mgrid[0 : height // stride, 0 : width // stride]
        centres = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32) + np.float32(0.5)
        points.append(centres * np.float32(stride))
        per_point.append(np.full(len(centres), stride, np.float32))
    return AnchorGrid(np.concatenate(points), np.concatenate(per_point))


def decode_boxes(distances: np.ndarray, points: np.ndarray, strides: np.ndarray) -> np.ndarray:
    """(K, 4) ltrb distances in stride units -> (K, 4) xyxy boxes in model-input pixels."""
    scaled = distances * strides[:, None]
    return np.stack([points[:, 0] - scaled[:, 0], points[:, 1] - scaled[:, 1],
                     points[:, 0] + scaled[:, 2], points[:, 1] + scaled[:, 3]], axis=1)


def select_candidates(scores: np.ndarray, threshold: float, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """(location, class) pairs with ``score > threshold``, at most ``top_k`` of the best.

    Args:
        scores: (N, C) scores of one image.
        threshold: strict lower bound.
        top_k: cap; among equal scores the lower (location, class) index wins.
    Returns:
        (locations, classes), int64, in candidate (location-major) order.
    """
    locations, classes = np.nonzero(scores > threshold)
    if len(locations) > top_k:
        values = scores[locations, classes]
        best = np.sort(np.argsort(-values, kind="stable")[:top_k])
        locations, classes = locations[best], classes[best]
    return locations.astype(np.int64), classes.astype(np.int64)


@dataclass(frozen=True)
class Detections:
    """Detections of one image, best first.

    ``boxes`` are xyxy in original-image pixels (float64, clipped); ``locations`` index the
    dense outputs (the anchor each detection came from).
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    locations: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def check_dense_outputs(distances: np.ndarray, scores: np.ndarray, grid: AnchorGrid,
                        options: DetectionOptions) -> None:
    """Raises when the outputs of one batch do not fit the anchor grid or the class list."""
    if distances.ndim != 3 or distances.shape[1:] != (len(grid), 4):
        raise InputValidationError(
            f"expected boxes output (batch, {len(grid)}, 4) for strides {list(options.strides)}, "
            f"got {distances.shape}", hint="check the spec's strides against the model")
    classes = len(options.class_names)
    if scores.shape != (distances.shape[0], len(grid), classes):
        raise ConfigError(
            f"expected scores output (batch, {len(grid)}, {classes}) for {classes} class names, "
            f"got {scores.shape}", hint="the spec's class_names must match the model's class head")


def detect(distances: np.ndarray, scores: np.ndarray, grid: AnchorGrid, options: DetectionOptions,
           geometry: Geometry) -> Detections:
    """Decodes one image's dense outputs into its final detections.

    Args:
        distances: (N, 4) box distances of one image.
        scores: (N, C) class scores of one image.
        grid: the model's anchor grid.
        options: thresholds and limits.
        geometry: how model-input pixels map to the original image.
    Returns:
        The image's detections (see ``Detections``).
    """
    scores = np.asarray(scores, np.float32)
    locations, classes = select_candidates(scores, options.score_threshold, options.pre_nms_top_k)
    values = scores[locations, classes]
    boxes = decode_boxes(np.asarray(distances[locations], np.float32), grid.points[locations],
                         grid.strides[locations])
    keep = batched_nms(boxes, values, classes, options.iou_threshold)
    original = geometry.boxes_to_original(boxes[keep].astype(np.float64))
    # a box that lies wholly in the letterbox padding is empty once clipped to the image
    inside = np.flatnonzero((original[:, 2] > original[:, 0]) & (original[:, 3] > original[:, 1]))
    inside = inside[: options.max_detections]
    keep = keep[inside]
    return Detections(original[inside], values[keep], classes[keep], locations[keep])
