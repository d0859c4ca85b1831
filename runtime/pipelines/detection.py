"""Detection pipelines: the YOLO-style detector and the img2pose-style face-pose detector.

Both take letterboxed images, get dense outputs from the engine and decode each image on its
own (``runtime.post.detection``), so a result never depends on which other images shared its
batch, and images of different sizes can share one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from batchforge.errors import ConfigError
from batchforge.runtime.pipelines.base import Pipeline, Prepared
from batchforge.runtime.post.detection import (
    AnchorGrid,
    DetectionOptions,
    Detections,
    anchor_grid,
    check_dense_outputs,
    detect,
)
from batchforge.runtime.post.facepose import (
    Camera,
    FacePoseOptions,
    decode_poses,
    face_reference,
    landmark_boxes,
    project_landmarks,
)
from batchforge.runtime.results import Result
from batchforge.runtime.runners.base import Runner
from batchforge.runtime.spec import ModelSpec


@dataclass(frozen=True)
class DetectionResult(Result):
    """Detections of one image, best first: xyxy boxes in original pixels, scores, classes.

    ``anchors`` are the dense-output indices the detections came from (not written to JSONL).
    """

    image_size: tuple[int, int]  # (height, width) of the original image
    boxes: np.ndarray  # (K, 4) float64
    scores: np.ndarray  # (K,) float32
    class_ids: np.ndarray  # (K,) int64
    class_names: tuple[str, ...]
    anchors: np.ndarray  # (K,) int64

    def __len__(self) -> int:
        return len(self.scores)

    def detection_records(self) -> list[dict[str, Any]]:
        return [{"box": box, "score": float(score), "class_id": int(cid), "class_name": name}
                for box, score, cid, name in zip(self.boxes, self.scores, self.class_ids, self.class_names)]

    def to_record(self) -> dict[str, Any]:
        record = super().to_record()
        record["image_size"] = list(self.image_size)
        record["detections"] = self.detection_records()
        return record


@dataclass(frozen=True)
class FacePoseResult(DetectionResult):
    """Faces of one image: the detection fields plus, per face, the 6DoF pose (rx, ry, rz in
    radians, tx, ty, tz in metres), 68 projected landmarks and the box around them."""

    poses: np.ndarray = field(default_factory=lambda: np.zeros((0, 6)))  # (K, 6)
    landmarks: np.ndarray = field(default_factory=lambda: np.zeros((0, 68, 2)))  # original pixels
    pose_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # (K, 4)

    def detection_records(self) -> list[dict[str, Any]]:
        records = super().detection_records()
        for record, pose, points, box in zip(records, self.poses, self.landmarks, self.pose_boxes):
            record["pose"] = dict(zip(("rx", "ry", "rz", "tx", "ty", "tz"), map(float, pose)))
            record["pose_box"] = box
            record["landmarks"] = points
        return records


class DetectorPipeline(Pipeline):
    """Image -> dense boxes/scores -> decoded, NMS-ed detections in original pixels."""

    family = "detector"
    options_type = DetectionOptions
    required_outputs: tuple[str, ...] = ("boxes", "scores")

    def __init__(self, spec: ModelSpec, runner: Runner, options: DetectionOptions | None = None,
                 **kwargs: Any) -> None:
        super().__init__(spec, runner, options, **kwargs)
        if spec.preprocess is None:
            raise ConfigError(f"{spec.family} model {spec.name!r} needs an image preprocessing spec")
        for name in self.required_outputs:
            if name not in spec.outputs:
                raise ConfigError(f"{spec.family} model {spec.name!r} must have an output named "
                                  f"{name!r}, has {list(spec.outputs)}")
        self.grid: AnchorGrid = anchor_grid(spec.preprocess.height, spec.preprocess.width,
                                            self.options.strides)

    def detections(self, outputs: Mapping[str, np.ndarray], items: Sequence[Prepared]) -> list[Detections]:
        """Per-image detections of a batch (before building result objects)."""
        distances, scores = outputs["boxes"], outputs["scores"]
        check_dense_outputs(distances, scores, self.grid, self.options)
        return [detect(distances[i], scores[i], self.grid, self.options, item.meta)
                for i, item in enumerate(items)]

    def postprocess(self, outputs: Mapping[str, np.ndarray], items: Sequence[Prepared]) -> list[Result]:
        return [self._result(item, found) for item, found in zip(items, self.detections(outputs, items))]

    def _result(self, item: Prepared, found: Detections, **extra: Any) -> DetectionResult:
        names = tuple(self.options.class_names[c] for c in found.class_ids)
        cls = FacePoseResult if extra else DetectionResult
        return cls(item.source, (item.meta.orig_height, item.meta.orig_width), found.boxes,
                   found.scores, found.class_ids, names, found.locations, **extra)


class FacePosePipeline(DetectorPipeline):
    """Image -> faces with a 6DoF pose, 68 projected landmarks and a pose-derived box each."""

    family = "facepose"
    options_type = FacePoseOptions
    required_outputs = ("boxes", "scores", "pose")

    def postprocess(self, outputs: Mapping[str, np.ndarray], items: Sequence[Prepared]) -> list[Result]:
        pose = outputs["pose"]
        if pose.shape != (*outputs["boxes"].shape[:2], 6):
            raise ConfigError(f"expected pose output (batch, {len(self.grid)}, 6), got {pose.shape}")
        reference = face_reference()
        width = float(np.ptp(reference[:, 0]))
        results: list[Result] = []
        for i, (item, found) in enumerate(zip(items, self.detections(outputs, items))):
            geometry = item.meta
            camera = Camera.for_image(geometry.orig_height, geometry.orig_width, self.options.focal_scale)
            loc = found.locations
            poses = decode_poses(pose[i][loc], self.grid.points[loc], self.grid.strides[loc],
                                 geometry, camera, width)
            landmarks = project_landmarks(poses, reference, camera)
            results.append(self._result(item, found, poses=poses, landmarks=landmarks,
                                        pose_boxes=landmark_boxes(landmarks)))
        return results
