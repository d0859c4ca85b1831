"""Keypoints pipeline: image (or crops of it) -> heatmaps -> keypoints in image coordinates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from batchforge.errors import BatchforgeError, ConfigError, InputValidationError
from batchforge.runtime.images import to_rgb_uint8
from batchforge.runtime.pipelines.base import Pipeline, Prepared
from batchforge.runtime.post.keypoints import (
    KeypointsOptions,
    crop_box_affine,
    decode_keypoints,
    geometry_affine,
)
from batchforge.runtime.preprocess import Geometry, preprocess_image
from batchforge.runtime.results import Result


@dataclass(frozen=True)
class KeypointsResult(Result):
    """One instance's keypoints: (K, 2) image coordinates (x, y) and (K,) scores."""

    keypoints: np.ndarray
    scores: np.ndarray
    names: tuple[str, ...] = ()
    box: tuple[float, float, float, float] | None = None

    def to_record(self) -> dict[str, Any]:
        record = super().to_record()
        names = self.names or tuple(str(i) for i in range(len(self.scores)))
        record["keypoints"] = [
            {"name": name, "x": float(x), "y": float(y), "score": float(s)}
            for name, (x, y), s in zip(names, self.keypoints, self.scores)
        ]
        if self.box is not None:
            record["box"] = list(self.box)
        return record


class KeypointsPipeline(Pipeline):
    """Top-down pose: each image (letterboxed) or each box crop of an image is one instance.

    ``Prepared.meta`` is the model-input -> image affine (a Geometry for whole images, a
    (2, 3) matrix for box crops), so crops and whole images decode the same way.
    """

    family = "keypoints"
    options_type = KeypointsOptions

    @property
    def input_hw(self) -> tuple[int, int]:
        shape = self.spec.inputs[0].item_shape
        return int(shape[-2]), int(shape[-1])

    def crop(self, image: np.ndarray, box: Sequence[float], source: str,
             padding: float = 1.25) -> Prepared:
        """Prepares the top-down crop around ``box`` (x1, y1, x2, y2) of an image."""
        if self.spec.preprocess is None:
            raise BatchforgeError(f"model {self.spec.name!r} has no image preprocessing spec")
        image = to_rgb_uint8(image, source=source, max_pixels=self.max_pixels)
        height, width = self.input_hw
        to_image = crop_box_affine(np.asarray(box, np.float64), (height, width), padding)
        # warpAffine samples pixel-index coordinates (centre of pixel j at j) and wants the
        # image -> input map: shift the continuous-coordinate affine by half a pixel each side
        scale = to_image[:, :2].diagonal()
        to_input = np.array([[1 / scale[0], 0.0, 0.0], [0.0, 1 / scale[1], 0.0]])
        to_input[:, 2] = -to_image[:, 2] / scale + 0.5 / scale - 0.5
        pixels = cv2.warpAffine(image.astype(np.float32), to_input, (width, height),
                                flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                borderValue=(self.spec.preprocess.pad_value,) * 3)
        chw, _ = preprocess_image(pixels, self.spec.preprocess)  # sizes match: normalise only
        return Prepared(source, {self.spec.inputs[0].name: chw}, to_image)

    def run_boxes(self, image: np.ndarray, boxes: Sequence[Sequence[float]], source: str = "image",
                  padding: float = 1.25) -> list[Result]:
        """Keypoints of each box of one image (e.g. from a detector), one result per box."""
        prepared = [self.crop(image, box, source, padding) for box in boxes]
        results = self.run_prepared(prepared)
        return [KeypointsResult(r.source, r.keypoints, r.scores, r.names,  # type: ignore[attr-defined]
                                tuple(float(v) for v in box))
                for r, box in zip(results, boxes)]

    def postprocess(self, outputs: Mapping[str, np.ndarray], items: Sequence[Prepared]) -> list[Result]:
        heatmaps = outputs[self.spec.outputs[0]]
        if heatmaps.ndim != 4 or heatmaps.shape[0] != len(items):
            raise InputValidationError(f"expected heatmaps of shape ({len(items)}, joints, H, W), "
                                       f"got {heatmaps.shape}")
        affines = np.stack([_affine(item.meta) for item in items])
        keypoints, scores = decode_keypoints(heatmaps, affines, self.input_hw, self.options)
        names = tuple(self.options.keypoint_names)
        if names and len(names) != heatmaps.shape[1]:
            raise ConfigError(f"the spec names {len(names)} keypoints but the model gives "
                              f"{heatmaps.shape[1]} heatmaps",
                              hint="fix keypoint_names in the export.json postprocess")
        return [KeypointsResult(item.source, kp, sc, names)
                for item, kp, sc in zip(items, keypoints, scores)]


def _affine(meta: Any) -> np.ndarray:
    if isinstance(meta, Geometry):
        return geometry_affine(meta)
    return np.asarray(meta, np.float64)
