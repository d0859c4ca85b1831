"""MTCNN's NumPy steps between its three networks: the image pyramid, P-Net proposals, box
regression, squaring, crops for R-Net/O-Net, landmarks in original pixels.

Geometry follows the MTCNN papers' reference code (the one the trained weights were made with):
P-Net cells are 12x12 windows at stride 2 on a pyramid level; a box's width for the R-Net/O-Net
offsets and landmarks is ``x2 - x1 + 1``; crops are taken from the integer box clipped to the
image (1-based, as the original MATLAB code). The last NMS uses the "Min" overlap
(intersection over the smaller box) as there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from batchforge.errors import ConfigError
from batchforge.runtime.post.nms import batched_nms

PIXEL_MEAN = 127.5  # the networks take (pixel - 127.5) / 128
PIXEL_SCALE = 0.0078125
CELL, STRIDE = 12, 2  # P-Net: one 12x12 window per output cell, stride 2
RNET_SIZE, ONET_SIZE = 24, 48
LANDMARK_CROP_PX = ONET_SIZE  # O-Net landmarks are fractions of its 48x48 crop


@dataclass(frozen=True)
class MtcnnOptions:
    """The MTCNN detector's settings (facenet-pytorch's defaults).

    min_face_size: smallest face searched for, pixels (the first pyramid level is 12/min_face_size).
    factor: scale step between pyramid levels.
    thresholds: face probability cut of P-Net (>=), R-Net (>) and O-Net (>).
    scale_nms / pnet_nms / rnet_nms: IoU thresholds of NMS within one pyramid level, over all
        levels of an image, and after R-Net; onet_nms: "Min" overlap threshold of the last NMS.
    """

    min_face_size: float = 20.0
    factor: float = 0.709
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    scale_nms: float = 0.5
    pnet_nms: float = 0.7
    rnet_nms: float = 0.7
    onet_nms: float = 0.7

    def __post_init__(self) -> None:
        problems = []
        if not (isinstance(self.min_face_size, (int, float)) and self.min_face_size >= CELL):
            problems.append(f"min_face_size: expected a number >= {CELL} pixels, got {self.min_face_size!r}")
        if not (isinstance(self.factor, (int, float)) and 0.1 <= self.factor < 1):
            problems.append(f"factor: expected a pyramid step in [0.1, 1), got {self.factor!r}")
        if len(self.thresholds) != 3 or not all(isinstance(t, (int, float)) and 0 <= t < 1
                                                for t in self.thresholds):
            problems.append(f"thresholds: expected 3 probabilities in [0, 1), got {self.thresholds!r}")
        for name in ("scale_nms", "pnet_nms", "rnet_nms", "onet_nms"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value <= 1):
                problems.append(f"{name}: expected an overlap threshold in (0, 1], got {value!r}")
        if problems:
            raise ConfigError("invalid mtcnn postprocess options", problems=problems)


def pyramid_scales(height: int, width: int, min_face_size: float, factor: float) -> list[float]:
    """Scales of the pyramid levels: 12/min_face_size, then times ``factor`` while the shorter
    side stays >= 12 pixels."""
    scale = CELL / min_face_size
    shorter = min(height, width) * scale
    scales = []
    while shorter >= CELL:
        scales.append(scale)
        scale *= factor
        shorter *= factor
    return scales


def level_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(height, width) of the pyramid level at ``scale``."""
    return int(height * scale + 1), int(width * scale + 1)


def to_network(pixels: np.ndarray) -> np.ndarray:
    """RGB uint8/float HWC (or NHWC) -> float32 CHW (NCHW) scaled as the networks expect."""
    chw = np.moveaxis(np.asarray(pixels, np.float32), -1, -3)
    return np.ascontiguousarray((chw - np.float32(PIXEL_MEAN)) * np.float32(PIXEL_SCALE))


def _average_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) rows averaging input cells [floor(i*in/out), ceil((i+1)*in/out))."""
    index = np.arange(size_out)
    start = (index * size_in) // size_out
    end = -((-(index + 1) * size_in) // size_out)
    cells = np.arange(size_in)
    inside = (cells[None, :] >= start[:, None]) & (cells[None, :] < end[:, None])
    return (inside / inside.sum(axis=1, keepdims=True)).astype(np.float32)


def resize_area(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area resampling of an RGB (H, W, 3) image to (height, width), float32 pixels: each output
    pixel the mean of its integer window (adaptive average pooling, PyTorch's ``mode="area"``),
    the resampling the trained weights were used with. OpenCV's INTER_AREA weighs fractional
    pixels instead: measured up to 96 grey levels apart at 512 -> 308 px, and it interpolates
    when enlarging (72 levels on a 20x15 crop -> 48x48), which moved P-Net's boxes enough to
    cost 0.05-0.08 IoU against facenet-pytorch. Two small matrix products, rows then columns."""
    pixels = np.asarray(image, np.float32)
    rows = _average_matrix(pixels.shape[0], height) @ pixels.reshape(pixels.shape[0], -1)
    return np.matmul(_average_matrix(pixels.shape[1], width)[None],
                     rows.reshape(height, pixels.shape[1], -1))


def stage_threshold(stage: str, options: MtcnnOptions | None = None) -> float:
    """The face probability cut of one network (``pnet``/``rnet``/``onet``) at ``options``."""
    return (options or MtcnnOptions()).thresholds[("pnet", "rnet", "onet").index(stage)]


def face_probability(face_logit: np.ndarray) -> np.ndarray:
    """float32 face probability from the networks' ``face - not face`` logit (the sigmoid of the
    margin is the two-way softmax), computed in float64."""
    return (1.0 / (1.0 + np.exp(-np.asarray(face_logit, np.float64)))).astype(np.float32)


def proposals(offsets: np.ndarray, face_prob: np.ndarray, scale: float, threshold: float
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """P-Net cells at or over ``threshold`` on one level, as boxes in original pixels.

    Args:
        offsets: (N, 4, h, w) box offsets of N images at one level.
        face_prob: (N, h, w) face probabilities.
        scale: the level's scale.
        threshold: P-Net's probability cut.
    Returns:
        (boxes (K, 4) float32 xyxy, scores (K,), offsets (K, 4), image indices (K,)) stacked
        as (boxes, scores_offsets (K, 5), image_index).
    """
    image, row, col = np.nonzero(face_prob >= threshold)
    cells = np.stack([col, row], axis=1).astype(np.float32)
    top_left = np.floor((STRIDE * cells + 1) / np.float32(scale))
    bottom_right = np.floor((STRIDE * cells + CELL) / np.float32(scale))
    boxes = np.concatenate([top_left, bottom_right], axis=1).astype(np.float32)
    extra = np.concatenate([face_prob[image, row, col][:, None],
                            np.moveaxis(offsets, 1, -1)[image, row, col]], axis=1).astype(np.float32)
    return boxes, extra, image.astype(np.int64)


def regress(boxes: np.ndarray, offsets: np.ndarray, plus_one: bool) -> np.ndarray:
    """Boxes moved by their offsets (fractions of the box size; R-Net/O-Net measure the size
    with ``+1`` as the reference code, P-Net without)."""
    size = boxes[:, 2:4] - boxes[:, 0:2] + (1.0 if plus_one else 0.0)
    return np.concatenate([boxes[:, 0:2] + offsets[:, 0:2] * size, boxes[:, 2:4] + offsets[:, 2:4] * size], axis=1)


def square(boxes: np.ndarray) -> np.ndarray:
    """Each box grown to a square around its centre (side = the longer side)."""
    size = boxes[:, 2:4] - boxes[:, 0:2]
    side = size.max(axis=1, keepdims=True)
    top_left = boxes[:, 0:2] + size * 0.5 - side * 0.5
    return np.concatenate([top_left, top_left + side], axis=1)


def crop_windows(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """(K, 4) int64 [x0, y0, x1, y1) pixel windows of the boxes clipped to the image (the
    reference's 1-based ``pad``: from trunc(x1) - 1 to trunc(x2))."""
    corners = np.trunc(boxes).astype(np.int64)
    x0 = np.maximum(corners[:, 0], 1) - 1
    y0 = np.maximum(corners[:, 1], 1) - 1
    x1 = np.minimum(corners[:, 2], width)
    y1 = np.minimum(corners[:, 3], height)
    return np.stack([x0, y0, x1, y1], axis=1)


def crops(image: np.ndarray, windows: np.ndarray, size: int) -> np.ndarray:
    """(K, 3, size, size) network inputs of the windows of one RGB image (``resize_area``);
    an empty window (a box wholly outside the image) is a zero (mid-grey) crop."""
    out = np.zeros((len(windows), 3, size, size), np.float32)
    for k, (x0, y0, x1, y1) in enumerate(windows):
        if x1 > x0 and y1 > y0:
            out[k] = to_network(resize_area(image[y0:y1, x0:x1], size, size))
    return out


def landmarks_to_pixels(boxes: np.ndarray, points: np.ndarray) -> np.ndarray:
    """O-Net's landmarks (K, 10: x1..x5 then y1..y5 as fractions of the box) -> (K, 5, 2) pixels."""
    size = boxes[:, 2:4] - boxes[:, 0:2] + 1.0
    xs = boxes[:, 0:1] + size[:, 0:1] * points[:, 0:5] - 1.0
    ys = boxes[:, 1:2] + size[:, 1:2] * points[:, 5:10] - 1.0
    return np.stack([xs, ys], axis=-1)


def min_overlap(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """The "Min" overlap of one box with each of ``boxes``: intersection over the smaller area,
    sides with +1 as the reference code (float64)."""
    a, b = np.asarray(box, np.float64), np.asarray(boxes, np.float64)
    w = np.maximum(0.0, np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]) + 1)
    h = np.maximum(0.0, np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]) + 1)
    area = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    return w * h / np.minimum((a[2] - a[0] + 1) * (a[3] - a[1] + 1), area)


def min_overlap_nms(boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy NMS per group with the "Min" overlap (``min_overlap``): a box is dropped when its
    overlap with a kept box is over ``threshold``. Returns the kept indices, by decreasing score."""
    keep: list[int] = []
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        order = members[np.argsort(-scores[members], kind="stable")]
        while len(order):
            best, rest = order[0], order[1:]
            keep.append(int(best))
            order = rest[min_overlap(boxes[best], boxes[rest]) <= threshold]
    kept = np.asarray(keep, np.int64)
    return kept[np.argsort(-scores[kept], kind="stable")] if len(kept) else kept


def group_nms(boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, threshold: float) -> np.ndarray:
    """IoU NMS within each group (image, or image and level) -- torchvision's batched_nms."""
    return batched_nms(boxes, scores, groups, threshold) if len(boxes) else np.zeros(0, np.int64)

