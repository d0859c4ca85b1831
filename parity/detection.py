"""Detection parity (``detector`` and ``facepose``) on decoded outputs.

Reference side: the PyTorch module's FP32 outputs on torch-preprocessed images, decoded here
with torch ops and ``torchvision.ops.batched_nms`` (not the runtime's NumPy code), with the
zoo's canonical post-processing options; facepose poses and landmarks are rebuilt with
``torch.linalg.matrix_exp`` rotations. Engine side: the runtime pipeline's results, with the
options recorded in the artifact, as a deployment runs them.

Per image, reference and engine detections are matched by IoU with the Hungarian algorithm
(scipy), a pair needing IoU >= ``MATCH_IOU``, pairs from the same anchor and of the same class
preferred. On same-anchor pairs: the smallest IoU, the largest score difference, class
agreement, and for faces the largest pose component and landmark pixel errors; over all pairs
the share that come from the same anchor (NMS may keep the other of two near-tied neighbours
at lower precision); recall of the reference set and precision of the engine set. A detection
whose score is within the score tolerance of the score threshold (or of the max-detections
cut) may legitimately be present on one side only, so it is not required for recall or
precision. The 68-point 3D face reference is shared data (``runtime/data``), not code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torchvision
from scipy.optimize import linear_sum_assignment

from batchforge.errors import ParityError
from batchforge.export.samples import SEED_EVAL, generate
from batchforge.parity.gate import register_family
from batchforge.parity.report import Check
from batchforge.parity.session import EvalItem, EvalSet, FamilyParity, ModelContext
from batchforge.runtime.post.detection import DetectionOptions
from batchforge.runtime.post.facepose import FacePoseOptions, face_reference
from batchforge.runtime.results import Result
from batchforge.runtime.spec import ModelSpec, parse_options

DEFAULT_EVAL_SIZE = 16
MATCH_IOU = 0.5
MIN_DEPTH = 1e-3  # the documented depth clamp of the landmark projection (metres)


@dataclass(frozen=True)
class Found:
    """Decoded detections of one image from either side (float64 numpy arrays)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    anchors: np.ndarray
    poses: np.ndarray | None = None
    landmarks: np.ndarray | None = None


def torch_anchors(height: int, width: int, strides: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor centres (N, 2) and strides (N,) built with torch (levels in order, row-major)."""
    points, per_point = [], []
    for s in strides:
        ys, xs = torch.meshgrid(torch.arange(height // s), torch.arange(width // s), indexing="ij")
        centres = torch.stack([xs.flatten(), ys.flatten()], dim=1).to(torch.float32) + 0.5
        points.append(centres * s)
        per_point.append(torch.full((len(centres),), float(s)))
    return torch.cat(points), torch.cat(per_point)


def reference_detect(distances: torch.Tensor, scores: torch.Tensor,
                     anchors: tuple[torch.Tensor, torch.Tensor], opts: DetectionOptions,
                     geometry: Any) -> tuple[torch.Tensor, Found]:
    """Threshold, top-k, decode, batched NMS, letterbox inverse, empty boxes dropped, max
    detections (all torch).

    Returns:
        (anchor indices of the detections, the detections in original pixels).
    """
    points, strides = anchors
    loc, cls = torch.nonzero(scores > opts.score_threshold, as_tuple=True)
    values = scores[loc, cls]
    if len(values) > opts.pre_nms_top_k:
        best = torch.sort(values, descending=True, stable=True).indices[: opts.pre_nms_top_k].sort().values
        loc, cls, values = loc[best], cls[best], values[best]
    d = distances[loc] * strides[loc, None]
    p = points[loc]
    boxes = torch.stack([p[:, 0] - d[:, 0], p[:, 1] - d[:, 1], p[:, 0] + d[:, 2], p[:, 1] + d[:, 3]], dim=1)
    keep = torchvision.ops.batched_nms(boxes, values, cls, opts.iou_threshold).sort().values
    keep = keep[torch.sort(values[keep], descending=True, stable=True).indices]
    pad = torch.tensor([geometry.pad_x, geometry.pad_y] * 2, dtype=torch.float64)
    scale = torch.tensor([geometry.scale_x, geometry.scale_y] * 2, dtype=torch.float64)
    size = torch.tensor([geometry.orig_width, geometry.orig_height] * 2, dtype=torch.float64)
    original = torch.minimum(((boxes[keep].double() - pad) / scale).clamp_min(0.0), size)
    inside = ((original[:, 2] > original[:, 0]) & (original[:, 3] > original[:, 1])).nonzero()[:, 0]
    inside = inside[: opts.max_detections]
    keep = keep[inside]
    return loc[keep], Found(original[inside].numpy(), values[keep].double().numpy(),
                            cls[keep].numpy().astype(np.float64), loc[keep].numpy())


def reference_poses(raw: torch.Tensor, anchors: tuple[torch.Tensor, torch.Tensor], geometry: Any,
                    focal_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Global poses (K, 6) and projected landmarks (K, 68, 2) of the detections' pose codes."""
    points, strides = (a.double() for a in anchors)
    raw = raw.double()
    s = strides[:, None]
    height, width = geometry.orig_height, geometry.orig_width
    focal = focal_scale * float(np.hypot(width, height))
    centre_in = points + raw[:, 3:5] * s
    u = (centre_in[:, 0] - geometry.pad_x) / geometry.scale_x
    v = (centre_in[:, 1] - geometry.pad_y) / geometry.scale_y
    face_px = s[:, 0] * torch.exp(raw[:, 5].clamp(-20.0, 20.0)) / geometry.scale_x
    reference = torch.from_numpy(np.array(face_reference()))
    tz = focal * (reference[:, 0].max() - reference[:, 0].min()) / face_px
    t = torch.stack([(u - width / 2) * tz / focal, (v - height / 2) * tz / focal, tz], dim=1)
    skew = torch.zeros(len(raw), 3, 3, dtype=torch.float64)
    rx, ry, rz = raw[:, 0], raw[:, 1], raw[:, 2]
    skew[:, 0, 1], skew[:, 0, 2], skew[:, 1, 2] = -rz, ry, -rx
    skew[:, 1, 0], skew[:, 2, 0], skew[:, 2, 1] = rz, -ry, rx
    cam = torch.linalg.matrix_exp(skew) @ reference.T + t[:, :, None]  # (K, 3, 68)
    depth = cam[:, 2].clamp_min(MIN_DEPTH)
    landmarks = torch.stack([focal * cam[:, 0] / depth + width / 2,
                             focal * cam[:, 1] / depth + height / 2], dim=2)
    return torch.cat([raw[:, :3], t], dim=1).numpy(), landmarks.numpy()


@dataclass
class MatchStats:
    """Running totals of the matching over an evaluation set."""

    ious: list[float]
    score_diffs: list[float]
    same_class: list[bool]
    pose_errors: list[float]
    landmark_errors: list[float]
    pairs: int = 0
    same_anchor: int = 0
    required_ref: int = 0
    matched_ref: int = 0
    required_eng: int = 0
    matched_eng: int = 0
    reference_total: int = 0

    @classmethod
    def empty(cls) -> MatchStats:
        return cls([], [], [], [], [])

    def add(self, ref: Found, eng: Found, ref_floor: float, eng_floor: float) -> None:
        """Matches one image's detections and accumulates the metrics.

        Numeric agreement (IoU, score, class, pose, landmarks) is measured on pairs that come
        from the same anchor on both sides; a pair from different anchors (NMS picked the other
        of two near-tied neighbours) only counts against ``anchor_agreement``.
        """
        self.reference_total += len(ref.scores)
        rows, cols = match(ref, eng)
        same = ref.anchors[rows] == eng.anchors[cols]
        self.pairs += len(rows)
        self.same_anchor += int(same.sum())
        r, c = rows[same], cols[same]
        self.ious += [float(v) for v in pairwise_iou(ref.boxes[r], eng.boxes[c]).diagonal()]
        self.score_diffs += list(np.abs(ref.scores[r] - eng.scores[c]))
        self.same_class += list(ref.classes[r] == eng.classes[c])
        if ref.poses is not None and eng.poses is not None and len(r):
            self.pose_errors.append(float(np.max(np.abs(ref.poses[r] - eng.poses[c]))))
            dist = np.linalg.norm(ref.landmarks[r] - eng.landmarks[c], axis=2)
            self.landmark_errors.append(float(dist.max()))
        required_ref = ref.scores >= ref_floor
        required_eng = eng.scores >= eng_floor
        self.required_ref += int(required_ref.sum())
        self.matched_ref += int(required_ref[rows].sum())
        self.required_eng += int(required_eng.sum())
        self.matched_eng += int(required_eng[cols].sum())


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of two sets of xyxy boxes (torchvision.ops.box_iou in float64)."""
    return torchvision.ops.box_iou(torch.from_numpy(a).double(), torch.from_numpy(b).double()).numpy()


def match(ref: Found, eng: Found) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian matching maximising IoU (+1 for the same class, +2 for the same anchor);
    pairs need IoU >= MATCH_IOU."""
    if not len(ref.scores) or not len(eng.scores):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    iou = pairwise_iou(ref.boxes, eng.boxes)
    same_class = ref.classes[:, None] == eng.classes[None, :]
    bonus = same_class + 2.0 * (ref.anchors[:, None] == eng.anchors[None, :])
    gain = np.where(iou >= MATCH_IOU, iou + bonus, 0.0)
    rows, cols = linear_sum_assignment(gain, maximize=True)
    valid = iou[rows, cols] >= MATCH_IOU
    return rows[valid], cols[valid]


def required_floor(found: Found, opts: DetectionOptions, margin: float) -> float:
    """Scores below this may be missing on the other side without being an error."""
    floor = opts.score_threshold + margin
    if len(found.scores) >= opts.max_detections:
        floor = max(floor, float(found.scores[-1]) + margin)
    return floor


class DetectionParity(FamilyParity):
    family = "detector"
    options_type: type[DetectionOptions] = DetectionOptions

    def eval_set(self, spec: ModelSpec, size: int | None) -> EvalSet:
        count = size or DEFAULT_EVAL_SIZE
        items = tuple(EvalItem(name, image) for name, image in generate(self.family, count, SEED_EVAL))
        return EvalSet(f"{self.family}-{count}", items)

    def reference_found(self, ctx: ModelContext) -> list[Found]:
        opts = parse_options(self.options_type, ctx.reference_spec.postprocess, f"{self.family} options")
        pre = ctx.reference_spec.preprocess
        assert pre is not None
        anchors = torch_anchors(pre.height, pre.width, opts.strides)
        raw = {k: torch.from_numpy(v) for k, v in ctx.reference.raw.items()}
        found = []
        for i, geometry in enumerate(ctx.reference.metas):
            loc, dets = reference_detect(raw["boxes"][i], raw["scores"][i], anchors, opts, geometry)
            found.append(self.with_poses(dets, raw, i, loc, anchors, geometry, opts))
        return found

    def with_poses(self, dets: Found, raw: dict[str, torch.Tensor], index: int, loc: torch.Tensor,
                   anchors: tuple[torch.Tensor, torch.Tensor], geometry: Any, opts: Any) -> Found:
        return dets

    def engine_found(self, results: Sequence[Result]) -> list[Found]:
        return [Found(r.boxes, r.scores.astype(np.float64), r.class_ids.astype(np.float64),  # type: ignore[attr-defined]
                      r.anchors) for r in results]  # type: ignore[attr-defined]

    def task_checks(self, ctx: ModelContext) -> list[Check]:
        ref_opts = parse_options(self.options_type, ctx.reference_spec.postprocess, f"{self.family} options")
        eng_opts = ctx.engine.pipeline.options
        margin = ctx.limits["score_abs"].value
        results = ctx.engine.pipeline.postprocess(ctx.engine.raw, ctx.engine.prepared)
        stats = MatchStats.empty()
        for ref, eng in zip(self.reference_found(ctx), self.engine_found(results)):
            stats.add(ref, eng, required_floor(ref, ref_opts, margin), required_floor(eng, eng_opts, margin))
        if stats.reference_total == 0:
            raise ParityError(
                f"{ctx.name}: the reference found no detections on {len(ctx.eval_set.items)} "
                "evaluation images, so detection parity would prove nothing",
                hint="re-export the model (its init is calibrated to detect), or use a larger --eval-size")
        return self.checks(ctx, stats)

    def checks(self, ctx: ModelContext, stats: MatchStats) -> list[Check]:
        limits = ctx.limits
        pairs = len(stats.ious)
        detail = f"{pairs} same-anchor pairs, {stats.reference_total} reference detections"
        recall = stats.matched_ref / stats.required_ref if stats.required_ref else 1.0
        precision = stats.matched_eng / stats.required_eng if stats.required_eng else 1.0
        return [
            Check("matched_iou_min", min(stats.ious, default=1.0), limits["matched_iou"], detail),
            Check("score_abs_max", float(max(stats.score_diffs, default=0.0)), limits["score_abs"], detail),
            Check("class_agreement", float(np.mean(stats.same_class)) if pairs else 1.0,
                  limits["class_agreement"], detail),
            Check("anchor_agreement", stats.same_anchor / stats.pairs if stats.pairs else 1.0,
                  limits["anchor_agreement"],
                  f"{stats.same_anchor}/{stats.pairs} matched pairs from the same anchor on both sides"),
            Check("recall", recall, limits["recall"],
                  f"{stats.matched_ref}/{stats.required_ref} required reference detections matched"),
            Check("precision", precision, limits["precision"],
                  f"{stats.matched_eng}/{stats.required_eng} required engine detections matched"),
        ]

    def batch_quantities(self, results: Sequence[Result]) -> dict[str, list[np.ndarray]]:
        return {"boxes": [r.boxes for r in results], "scores": [r.scores for r in results],  # type: ignore[attr-defined]
                "classes": [r.class_ids for r in results]}  # type: ignore[attr-defined]


class FacePoseParity(DetectionParity):
    family = "facepose"
    options_type = FacePoseOptions

    def with_poses(self, dets: Found, raw: dict[str, torch.Tensor], index: int, loc: torch.Tensor,
                   anchors: tuple[torch.Tensor, torch.Tensor], geometry: Any, opts: Any) -> Found:
        poses, landmarks = reference_poses(raw["pose"][index][loc], (anchors[0][loc], anchors[1][loc]),
                                           geometry, opts.focal_scale)
        return Found(dets.boxes, dets.scores, dets.classes, dets.anchors, poses, landmarks)

    def engine_found(self, results: Sequence[Result]) -> list[Found]:
        return [Found(f.boxes, f.scores, f.classes, f.anchors, r.poses, r.landmarks)  # type: ignore[attr-defined]
                for f, r in zip(super().engine_found(results), results)]

    def checks(self, ctx: ModelContext, stats: MatchStats) -> list[Check]:
        detail = f"max over {len(stats.pose_errors)} images with matched faces"
        return [
            *super().checks(ctx, stats),
            Check("pose_abs_max", max(stats.pose_errors, default=0.0), ctx.limits["pose_abs"],
                  detail + " (radians / metres)"),
            Check("landmark_px_max", max(stats.landmark_errors, default=0.0), ctx.limits["landmark_px"],
                  detail + " (original-image pixels)"),
        ]

    def batch_quantities(self, results: Sequence[Result]) -> dict[str, list[np.ndarray]]:
        quantities = super().batch_quantities(results)
        quantities["pose"] = [r.poses for r in results]  # type: ignore[attr-defined]
        quantities["landmarks"] = [r.landmarks for r in results]  # type: ignore[attr-defined]
        return quantities


register_family(DetectionParity())
register_family(FacePoseParity())
