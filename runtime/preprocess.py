"""Image -> model input: resize (stretch or letterbox), channel order, normalisation.

Resizing is bilinear on float32 pixels with half-pixel centres (OpenCV INTER_LINEAR), which the
PyTorch reference reproduces independently with ``torch.nn.functional.interpolate``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from batchforge.runtime.spec import Preprocess, ResizeMode


@dataclass(frozen=True)
class Geometry:
    """How model-input pixels map back to the original image.

    ``x_orig = (x_input - pad_x) / scale_x`` (and the same for y).
    """

    orig_height: int
    orig_width: int
    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float

    def to_original(self, xy: np.ndarray) -> np.ndarray:
        """Maps (..., 2) model-input coordinates to original-image coordinates."""
        out = np.empty_like(xy)
        out[..., 0] = (xy[..., 0] - self.pad_x) / self.scale_x
        out[..., 1] = (xy[..., 1] - self.pad_y) / self.scale_y
        return out

    def boxes_to_original(self, boxes: np.ndarray, clip: bool = True) -> np.ndarray:
        """Maps (N, 4) xyxy boxes to original-image pixels, clipped to the image."""
        out = self.to_original(boxes.reshape(-1, 2, 2)).reshape(boxes.shape)
        if clip:
            out[:, 0::2] = np.clip(out[:, 0::2], 0, self.orig_width)
            out[:, 1::2] = np.clip(out[:, 1::2], 0, self.orig_height)
        return out


def letterbox_geometry(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int, int, int]:
    """(new_h, new_w, pad_top, pad_left) for an aspect-preserving, centred letterbox."""
    ratio = min(target_h / height, target_w / width)
    new_h = max(1, min(target_h, round(height * ratio)))
    new_w = max(1, min(target_w, round(width * ratio)))
    return new_h, new_w, (target_h - new_h) // 2, (target_w - new_w) // 2


def resize_float(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of an HxWxC float32 image (no-op when the size already matches)."""
    if image.shape[0] == height and image.shape[1] == width:
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def preprocess_image(image: np.ndarray, pre: Preprocess) -> tuple[np.ndarray, Geometry]:
    """RGB uint8 (H, W, 3) -> float32 (3, h, w) model input and the geometry to undo it.

    Args:
        image: decoded image (see batchforge.runtime.images for the conversion rules).
        pre: the model's preprocessing spec.
    Returns:
        (chw, geometry).
    """
    height, width = image.shape[:2]
    pixels = image.astype(np.float32)
    if pre.resize is ResizeMode.LETTERBOX:
        new_h, new_w, top, left = letterbox_geometry(height, width, pre.height, pre.width)
        canvas = np.full((pre.height, pre.width, 3), pre.pad_value, dtype=np.float32)
        canvas[top : top + new_h, left : left + new_w] = resize_float(pixels, new_h, new_w)
        pixels = canvas
        geometry = Geometry(height, width, new_w / width, new_h / height, float(left), float(top))
    else:
        pixels = resize_float(pixels, pre.height, pre.width)
        geometry = Geometry(height, width, pre.width / width, pre.height / height, 0.0, 0.0)
    mean = np.asarray(pre.mean, np.float32) * 255.0
    inv_std = 1.0 / (np.asarray(pre.std, np.float32) * 255.0)
    # normalise and transpose in one pass per channel, straight into the (3, h, w) result: the
    # same float32 operations as ((pixels - mean) * inv_std).transpose(2, 0, 1), so the same bits,
    # without the two full-size temporaries and the strided copy that made it contiguous (0.24 s
    # of a 0.50 s preprocess stage on 64 detector inputs)
    order = (2, 1, 0) if pre.channel_order == "BGR" else (0, 1, 2)
    chw = np.empty((3, *pixels.shape[:2]), np.float32)
    for channel, source_channel in enumerate(order):
        np.subtract(pixels[:, :, source_channel], mean[channel], out=chw[channel])
        np.multiply(chw[channel], inv_std[channel], out=chw[channel])
    return chw, geometry
