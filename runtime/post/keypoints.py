"""Heatmap keypoints: per-joint argmax, sub-pixel refinement, scores, back to image coordinates.

Coordinates are continuous pixel coordinates throughout, the same convention as the letterbox
``Geometry``: pixel ``(row i, col j)`` covers ``[j, j+1) x [i, i+1)`` and its centre is
``(j + 0.5, i + 0.5)``. A heatmap cell index ``x`` (column) is at model-input coordinate
``(x + 0.5) * stride`` where ``stride = input width / heatmap width`` (from the shapes).

Refinement of the integer argmax (``refine``):
- ``"dark"`` (default): DARK (Zhang et al., CVPR 2020). The heatmap is Gaussian-blurred
  (``dark_kernel`` x ``dark_kernel``, sigma by OpenCV's rule ``0.3 * ((k - 1) / 2 - 1) + 0.8``,
  reflect-101 borders), its log taken (values clipped at 1e-10), and the peak moved by the
  Newton step ``-H^-1 g`` of the log map at the argmax (3-point central differences). Applied
  only where the Hessian is negative definite and the argmax is not on the border; each offset
  component is clipped to one cell. Continuous in the heatmap values, so small engine errors
  give small keypoint errors.
- ``"quarter"``: the classic quarter offset towards the higher neighbour in x and in y.
- ``"none"``: the integer argmax.
The score of a joint is the raw heatmap maximum (the value at the integer argmax).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from batchforge.errors import ConfigError, InputValidationError
from batchforge.runtime.preprocess import Geometry

REFINE_MODES = ("dark", "quarter", "none")
LOG_FLOOR = 1e-10


@dataclass(frozen=True)
class KeypointsOptions:
    """Options of the keypoints family (``spec.postprocess``)."""

    refine: str = "dark"
    dark_kernel: int = 11
    keypoint_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.refine not in REFINE_MODES:
            raise ConfigError(f"keypoints refine must be one of {REFINE_MODES}, got {self.refine!r}")
        if not isinstance(self.dark_kernel, int) or self.dark_kernel < 3 or self.dark_kernel % 2 == 0:
            raise ConfigError(f"keypoints dark_kernel must be an odd integer >= 3, got {self.dark_kernel!r}")


def heatmap_maxima(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer argmax of every heatmap (first maximum in row-major order on ties).

    Args:
        heatmaps: (B, K, H, W).
    Returns:
        (xy (B, K, 2) int64 cell indices (column, row), scores (B, K) float32).
    """
    _check_heatmaps(heatmaps)
    batch, joints, _, width = heatmaps.shape
    flat = heatmaps.reshape(batch, joints, -1)
    index = np.argmax(flat, axis=-1)
    scores = np.take_along_axis(flat, index[..., None], axis=-1)[..., 0]
    return np.stack([index % width, index // width], axis=-1), scores.astype(np.float32)


def dark_sigma(kernel: int) -> float:
    """OpenCV's default sigma for a Gaussian kernel of this size."""
    return 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8


def _gather(maps: np.ndarray, xy: np.ndarray, dx: int, dy: int) -> np.ndarray:
    batch, joints, height, width = maps.shape
    b, k = np.meshgrid(np.arange(batch), np.arange(joints), indexing="ij")
    x = np.clip(xy[..., 0] + dx, 0, width - 1)
    y = np.clip(xy[..., 1] + dy, 0, height - 1)
    return maps[b, k, y, x]


def _interior(xy: np.ndarray, height: int, width: int) -> np.ndarray:
    x, y = xy[..., 0], xy[..., 1]
    return (x >= 1) & (x <= width - 2) & (y >= 1) & (y <= height - 2)


def refine_quarter(heatmaps: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Quarter-cell offset towards the higher neighbour (interior peaks only)."""
    height, width = heatmaps.shape[2:]
    maps = heatmaps.astype(np.float64)
    step_x = np.sign(_gather(maps, xy, 1, 0) - _gather(maps, xy, -1, 0))
    step_y = np.sign(_gather(maps, xy, 0, 1) - _gather(maps, xy, 0, -1))
    offset = 0.25 * np.stack([step_x, step_y], axis=-1)
    return xy + np.where(_interior(xy, height, width)[..., None], offset, 0.0)


def blur_heatmaps(heatmaps: np.ndarray, kernel: int) -> np.ndarray:
    """Gaussian blur of each (H, W) map in float64 (reflect-101 borders, OpenCV's default)."""
    batch, joints, height, width = heatmaps.shape
    out = np.empty((batch, joints, height, width), np.float64)
    sigma = dark_sigma(kernel)
    for b in range(batch):
        # OpenCV blurs up to 512 channels at once; joints are the channels of one item
        stack = np.ascontiguousarray(heatmaps[b].astype(np.float64).transpose(1, 2, 0))
        blurred = cv2.GaussianBlur(stack, (kernel, kernel), sigma, sigmaY=sigma,
                                   borderType=cv2.BORDER_REFLECT_101)
        out[b] = blurred.reshape(height, width, joints).transpose(2, 0, 1)
    return out


def refine_dark(heatmaps: np.ndarray, xy: np.ndarray, kernel: int) -> np.ndarray:
    """DARK refinement (see the module docstring). Returns float64 (B, K, 2) cell coordinates."""
    height, width = heatmaps.shape[2:]
    logs = np.log(np.maximum(blur_heatmaps(heatmaps, kernel), LOG_FLOOR))
    centre = _gather(logs, xy, 0, 0)
    right, left = _gather(logs, xy, 1, 0), _gather(logs, xy, -1, 0)
    down, up = _gather(logs, xy, 0, 1), _gather(logs, xy, 0, -1)
    gx, gy = 0.5 * (right - left), 0.5 * (down - up)
    hxx, hyy = right - 2 * centre + left, down - 2 * centre + up
    hxy = 0.25 * (_gather(logs, xy, 1, 1) - _gather(logs, xy, -1, 1)
                  - _gather(logs, xy, 1, -1) + _gather(logs, xy, -1, -1))
    det = hxx * hyy - hxy * hxy
    usable = _interior(xy, height, width) & (hxx < 0) & (det > 0)
    safe = np.where(usable, det, 1.0)
    # offset = -H^-1 g with H^-1 = [[hyy, -hxy], [-hxy, hxx]] / det
    off_x = -(hyy * gx - hxy * gy) / safe
    off_y = -(hxx * gy - hxy * gx) / safe
    offset = np.clip(np.stack([off_x, off_y], axis=-1), -1.0, 1.0)
    return xy + np.where(usable[..., None], offset, 0.0)


def decode_heatmaps(heatmaps: np.ndarray, refine: str = "dark", dark_kernel: int = 11
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per-joint peak of (B, K, H, W) heatmaps in cell-index coordinates, refined.

    Returns:
        (xy (B, K, 2) float64 cell coordinates (column, row), scores (B, K) float32).
    """
    xy, scores = heatmap_maxima(heatmaps)
    if refine == "dark":
        return refine_dark(heatmaps, xy, dark_kernel), scores
    if refine == "quarter":
        return refine_quarter(heatmaps, xy), scores
    if refine == "none":
        return xy.astype(np.float64), scores
    raise ConfigError(f"refine must be one of {REFINE_MODES}, got {refine!r}")


def cells_to_input(xy: np.ndarray, heatmap_hw: tuple[int, int], input_hw: tuple[int, int]) -> np.ndarray:
    """Heatmap cell-index coordinates -> continuous model-input coordinates (cell centres)."""
    stride = np.array([input_hw[1] / heatmap_hw[1], input_hw[0] / heatmap_hw[0]])
    return (xy + 0.5) * stride


def geometry_affine(geometry: Geometry) -> np.ndarray:
    """The (2, 3) affine matrix taking model-input coordinates to original-image coordinates."""
    return np.array([[1.0 / geometry.scale_x, 0.0, -geometry.pad_x / geometry.scale_x],
                     [0.0, 1.0 / geometry.scale_y, -geometry.pad_y / geometry.scale_y]])


def crop_box_affine(box: np.ndarray, input_hw: tuple[int, int], padding: float = 1.25) -> np.ndarray:
    """The (2, 3) model-input -> image affine of a top-down crop around ``box``.

    The box (x1, y1, x2, y2, continuous pixels) is widened to the input's aspect ratio and
    scaled by ``padding`` about its centre, the usual top-down pose crop.
    """
    box = np.asarray(box, np.float64)
    if box.shape != (4,) or not np.all(np.isfinite(box)) or box[2] <= box[0] or box[3] <= box[1]:
        raise InputValidationError(f"crop box must be finite (x1, y1, x2, y2) with x2 > x1 and "
                                   f"y2 > y1, got {box.tolist()}")
    height, width = input_hw
    centre_x, centre_y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    box_w, box_h = box[2] - box[0], box[3] - box[1]
    if box_w / box_h > width / height:
        box_h = box_w * height / width
    else:
        box_w = box_h * width / height
    box_w, box_h = box_w * padding, box_h * padding
    return np.array([[box_w / width, 0.0, centre_x - box_w / 2],
                     [0.0, box_h / height, centre_y - box_h / 2]])


def apply_affine(xy: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Applies a (2, 3) affine matrix to (..., 2) points."""
    return xy @ matrix[:, :2].T + matrix[:, 2]


def decode_keypoints(heatmaps: np.ndarray, affines: np.ndarray, input_hw: tuple[int, int],
                     options: KeypointsOptions) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps -> keypoints in image coordinates and their scores.

    Args:
        heatmaps: (B, K, H, W) raw model output.
        affines: (B, 2, 3) model-input -> image matrices (``geometry_affine``/``crop_box_affine``).
        input_hw: the model input's (height, width).
        options: refinement options.
    Returns:
        (keypoints (B, K, 2) float64 (x, y), scores (B, K) float32).
    """
    if affines.shape != (heatmaps.shape[0], 2, 3):
        raise InputValidationError(f"expected one (2, 3) affine per item, shape "
                                   f"{(heatmaps.shape[0], 2, 3)}, got {affines.shape}")
    cells, scores = decode_heatmaps(heatmaps, options.refine, options.dark_kernel)
    points = cells_to_input(cells, heatmaps.shape[2:], input_hw)
    return np.einsum("bij,bkj->bki", affines[:, :, :2], points) + affines[:, None, :, 2], scores


def _check_heatmaps(heatmaps: np.ndarray) -> None:
    if not isinstance(heatmaps, np.ndarray) or heatmaps.ndim != 4 or 0 in heatmaps.shape:
        shape = getattr(heatmaps, "shape", type(heatmaps).__name__)
        raise InputValidationError(f"expected heatmaps of shape (batch, joints, H, W), got {shape}")
    if not np.issubdtype(heatmaps.dtype, np.floating):
        raise InputValidationError(f"expected floating-point heatmaps, got {heatmaps.dtype}")
