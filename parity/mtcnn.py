"""Parity of the MTCNN family at two levels.

Each network (``mtcnn_pnet``/``rnet``/``onet``): raw outputs against the PyTorch module on real
inputs (photographs as a P-Net pyramid level, LFW face and non-face crops for R-Net/O-Net),
plus the face probability error and agreement on the stage's threshold decision.

The detector (``mtcnn``): the runtime's three-stage pipeline on real photographs against
facenet-pytorch's own ``MTCNN.detect`` (an implementation written elsewhere, with the same
trained weights): faces matched by IoU, then matched IoU, probability error, landmark pixel
error, recall and precision; and the pipeline's batched results against the same images run one
at a time.

Ties in the reference (SPEC 8: reported, never scored as disagreement). The cascade makes two
kinds of discrete decisions that a within-tier engine may take the other way:

- Crop windows. R-Net's and O-Net's crops start and end at box corners truncated to pixels. A
  corner of ours within the tier's pixel tolerance (SPEC keypoints px: 0.01 / 0.5 / 2) of the
  reference's that truncates to the neighbouring pixel is a tie; facenet-pytorch's ``detect()``
  is run with that crop edge at our pixel (its ``pad`` wrapped for the call). Only the pixels a
  network sees follow ours; every box, probability and landmark is still each side's own
  arithmetic, and the ties come from our boxes, not our crops (a crop bug of ours is not one).
  Measured: fp16's matched IoU 0.971 was one P-Net corner at x = 123.002 against 122.997.
- The last NMS. A greedy "Min" NMS over O-Net's boxes by face probability; one face often has
  several O-Net boxes within the tier's probability tolerance of each other. Its candidates come
  from ``detect()`` run with that NMS (``batched_nms_numpy``) keeping every box; a reference face
  is tied with each candidate the NMS drops for it ("Min" overlap over 0.7) whose probability is
  within twice the tier's probability tolerance of its own, and a face of ours is measured
  against the tied candidate it agrees with best (smallest worst error-to-limit ratio).

Both counts are reported. A face of ours unlike every tied candidate (a planted P-Net scale
error, landmarks left in crop fractions) still fails.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from batchforge.errors import ParityError
from batchforge.export.samples import SEED_EVAL
from batchforge.export.samples.mtcnn import photographs, stage_inputs
from batchforge.parity.detection import pairwise_iou
from batchforge.parity.gate import register_family
from batchforge.parity.report import Check
from batchforge.parity.session import EvalItem, EvalSet, FamilyParity, ModelContext, ParitySession
from batchforge.runtime.artifacts import Precision
from batchforge.runtime.loading import load_pipeline
from batchforge.runtime.pipelines.mtcnn import FacesResult
from batchforge.runtime.post import mtcnn as post
from batchforge.runtime.results import ErrorRecord, Result
from batchforge.runtime.spec import EnsembleSpec, ModelSpec
from batchforge.tolerances import limits_for

STAGE_EVAL_SIZE = {"pnet": 6, "rnet": 96, "onet": 96}
PHOTOGRAPHS = 6  # astronaut, camera and 4 LFW mosaics
MATCH_IOU = 0.5  # a face of ours and one of facenet-pytorch's are the same face at IoU >= 0.5
ONET_NMS_OVERLAP = 0.7  # its last NMS: "Min" overlap threshold


def reference_detector() -> Any:
    """facenet-pytorch's MTCNN with its own weights (CPU, every face, best first)."""
    try:
        from facenet_pytorch import MTCNN
    except ImportError as exc:
        raise ParityError(f"the mtcnn reference is facenet-pytorch's detect(), which cannot be imported: {exc}",
                          hint="run scripts/setup_venv.sh (it installs facenet-pytorch==2.6.0 --no-deps)") from None
    return MTCNN(keep_all=True, select_largest=False, device="cpu").eval()


@dataclass(frozen=True)
class Faces:
    """Faces of one image in original pixels: boxes (K, 4) xyxy, probabilities (K,), landmarks (K, 5, 2)."""

    boxes: np.ndarray
    probs: np.ndarray
    points: np.ndarray


@dataclass(frozen=True)
class ReferenceFaces:
    """facenet-pytorch's faces of one image, and its O-Net candidates before the final NMS."""

    faces: Faces
    candidates: Faces
    crops_following_ours: int = 0  # R-Net and O-Net crop windows cut at our pixel (tied corners)
    crops: int = 0  # all R-Net and O-Net crop windows

    def tied(self, margin: float, overlap: float) -> list[np.ndarray]:
        """Per face, the candidates it may stand for: itself (first) and each candidate the final
        NMS drops for it ("Min" overlap > ``overlap``) with a probability within ``margin``."""
        cand = self.candidates
        groups = []
        for box, prob in zip(self.faces.boxes, self.faces.probs):
            same = np.flatnonzero(np.all(cand.boxes == box, axis=1) & (cand.probs == prob))
            if not len(same):
                raise ParityError("a face of facenet-pytorch's detect() is not among its own candidates before "
                                  "the final NMS: the reference code differs from facenet-pytorch 2.6.0's",
                                  hint="install the locked version: scripts/setup_venv.sh")
            near = (post.min_overlap(box, cand.boxes) > overlap) & (np.abs(cand.probs - prob) <= margin)
            groups.append(np.concatenate([same[:1], np.setdiff1d(np.flatnonzero(near), same[:1])]))
        return groups


def _faces(found: tuple[Any, Any, Any]) -> Faces:
    boxes, probs, points = found
    if boxes is None:
        return Faces(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))
    return Faces(np.asarray(boxes, np.float64), np.asarray(probs, np.float64), np.asarray(points, np.float64))


@contextmanager
def _final_nms_keeping_every_box() -> Iterator[None]:
    """facenet-pytorch calls ``batched_nms_numpy`` once per detect(), for its last "Min" NMS (the
    earlier ones are torchvision's ``batched_nms``): for this block it keeps every box, best first."""
    from facenet_pytorch.models.utils import detect_face

    original = detect_face.batched_nms_numpy

    def keep_every_box(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, threshold: float,
                       method: str) -> torch.Tensor:
        return torch.argsort(scores, descending=True, stable=True)

    detect_face.batched_nms_numpy = keep_every_box
    try:
        yield
    finally:
        detect_face.batched_nms_numpy = original


@contextmanager
def _crops_following(ours: Sequence[np.ndarray], tie_px: float, counts: list[int]) -> Iterator[None]:
    """facenet-pytorch cuts R-Net's and O-Net's crops at its boxes' corners truncated to pixels
    (``pad``, called once for each in a detect()). For this block, a corner of its box within
    ``tie_px`` of the same corner of our twin box (every corner within ``tie_px``) that truncates
    to another pixel is a tie and takes our pixel; ``counts`` gets [windows moved, windows]."""
    if not len(ours):
        yield
        return
    from facenet_pytorch.models.utils import detect_face

    original = detect_face.pad
    calls = iter(ours)

    def pad(boxes: torch.Tensor, w: int, h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        y, ey, x, ex = original(boxes, w, h)
        mine = next(calls, None)
        if mine is None:
            raise ParityError("facenet-pytorch's detect() cut crops more than twice: its code differs from "
                              "facenet-pytorch 2.6.0's", hint="install the locked version: scripts/setup_venv.sh")
        theirs = boxes[:, :4].detach().cpu().numpy().astype(np.float64)
        counts[1] += len(theirs)
        if not len(theirs) or not len(mine):
            return y, ey, x, ex
        distance = np.abs(theirs[:, None, :] - np.asarray(mine, np.float64)[None, :, :]).max(axis=-1)
        twin = distance.argmin(axis=1)
        near = distance[np.arange(len(theirs)), twin] <= tie_px
        pixels = np.trunc(np.asarray(mine, np.float64)[twin]).astype(np.int64)
        corners = np.stack([x, y, ex, ey], axis=1).astype(np.int64)  # after pad's clipping
        moved = near[:, None] & (np.trunc(theirs).astype(np.int64) != pixels)
        counts[0] += int(moved.any(axis=1).sum())
        corners = np.where(moved, pixels, corners)
        x, y = np.maximum(corners[:, 0], 1), np.maximum(corners[:, 1], 1)
        ex, ey = np.minimum(corners[:, 2], w), np.minimum(corners[:, 3], h)
        return y, ey, x, ex

    detect_face.pad = pad
    try:
        yield
    finally:
        detect_face.pad = original


def _detect(detector: Any, image: np.ndarray) -> Faces:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its own deprecations are not ours to fail on
        return _faces(detector.detect(image, landmarks=True))


def reference_faces(detector: Any, image: np.ndarray, ours: Sequence[np.ndarray] = (),
                    tie_px: float = 0.0) -> ReferenceFaces:
    """facenet-pytorch's detect() on one image, and its candidates before the final NMS. Given
    ``ours`` (the boxes our R-Net and O-Net crops were cut from), its crop corners tied with ours
    within ``tie_px`` take our pixel (``_crops_following``)."""
    counts = [0, 0]
    with _crops_following(ours, tie_px, counts):
        faces = _detect(detector, image)
    with _crops_following(ours, tie_px, [0, 0]), _final_nms_keeping_every_box():
        candidates = _detect(detector, image)
    return ReferenceFaces(faces, candidates, *counts)


def match_tied(candidates: np.ndarray, groups: Sequence[np.ndarray], eng_boxes: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian matching of reference faces (their tied candidate groups) to our boxes, a pair
    scored by the IoU of ours with the nearest candidate of the face's group; pairs need IoU >=
    MATCH_IOU. Returns (reference rows, our columns)."""
    if not len(groups) or not len(eng_boxes):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    iou = pairwise_iou(candidates, eng_boxes)
    gain = np.stack([iou[group].max(axis=0) for group in groups])  # (faces, ours)
    rows, cols = linear_sum_assignment(np.where(gain >= MATCH_IOU, gain, 0.0), maximize=True)
    valid = gain[rows, cols] >= MATCH_IOU
    return rows[valid], cols[valid]


def closest_tied(candidates: Faces, group: np.ndarray, box: np.ndarray, prob: float, points: np.ndarray,
                 limits: dict[str, Any]) -> int:
    """The candidate of a tied group that a face of ours agrees with best: the smallest worst
    ratio of its errors (IoU shortfall, probability, landmark px) to their limits. Ours passes
    when it agrees with any of the reference's tied outcomes; the kept face wins equal ratios."""
    iou = pairwise_iou(candidates.boxes[group], box[None].astype(np.float64))[:, 0]
    ratios = np.stack([
        (1.0 - iou) / (1.0 - limits["matched_iou_min"].value),
        np.abs(candidates.probs[group] - prob) / limits["detect_prob_abs_max"].value,
        np.linalg.norm(candidates.points[group] - points, axis=-1).max(axis=1) / limits["landmark_px_max"].value,
    ], axis=1).max(axis=1)
    return int(group[np.argmin(ratios)])


class MtcnnParity(FamilyParity):
    family = "mtcnn"
    eval_set_per_model = True  # each network has its own input size

    def eval_set(self, spec: ModelSpec, size: int | None) -> EvalSet:
        stage = str(spec.postprocess.get("stage", "pnet"))
        items = stage_inputs(stage, size or STAGE_EVAL_SIZE[stage], SEED_EVAL)
        return EvalSet(f"mtcnn-{stage}-{len(items)}", tuple(EvalItem(n, x) for n, x in items))

    def reference_inputs(self, item: EvalItem, spec: ModelSpec) -> tuple[dict[str, np.ndarray], Any]:
        """torch-side scaling of the RGB uint8 input: (pixel - 127.5) / 128, CHW."""
        pixels = torch.from_numpy(np.ascontiguousarray(item.data)).permute(2, 0, 1).to(torch.float32)
        return {spec.inputs[0].name: ((pixels - 127.5) / 128.0).numpy()}, None

    def task_checks(self, ctx: ModelContext) -> list[Check]:
        stage = str(ctx.spec.postprocess.get("stage", "pnet"))
        ref = torch.sigmoid(torch.from_numpy(ctx.reference.raw["face_logit"]).double()).numpy()
        eng = post.face_probability(ctx.engine.raw["face_logit"])
        cut = post.stage_threshold(stage)  # facenet-pytorch's defaults
        agree = float(np.mean((ref > cut) == (eng > cut)))
        checks = [Check("face_prob_abs_max", float(np.max(np.abs(ref - eng))), ctx.limits["face_prob_abs_max"],
                        f"{ref.size} probabilities"),
                  Check("threshold_agreement", agree, ctx.limits["threshold_agreement"],
                        f"same side of {stage}'s {cut} on {ref.size} probabilities")]
        if "landmarks" in ctx.spec.outputs:
            err = np.abs(ctx.reference.raw["landmarks"] - ctx.engine.raw["landmarks"]) * post.LANDMARK_CROP_PX
            checks.append(Check("landmark_crop_px_max", float(err.max()), ctx.limits["landmark_crop_px_max"],
                                "O-Net landmarks in pixels of its 48x48 crop"))
        return checks

    def batch_quantities(self, results: Sequence[Result]) -> dict[str, list[np.ndarray]]:
        names = results[0].outputs if results else {}  # type: ignore[attr-defined]
        return {k: [r.outputs[k] for r in results] for k in names}  # type: ignore[attr-defined]

    # the three-stage detector ------------------------------------------------------------------
    def ensemble_checks(self, session: ParitySession, ensemble: EnsembleSpec,
                        precision: Precision) -> tuple[list[Check], list[str]]:
        limits = limits_for(self.family, precision)
        images = photographs(session.eval_size or PHOTOGRAPHS, SEED_EVAL)
        pipeline = load_pipeline(ensemble.name, output_dir=session.output_dir, precision=precision,
                                 backend=session.backend, threads=session.threads)
        session.ran(ensemble.name, precision, pipeline)
        with pipeline:
            prepared = [pipeline.prepare(image, name) for name, image in images]
            batched, cropped = pipeline.cascade(prepared)
            sequential = [pipeline.run_prepared([p])[0] for p in prepared]
        errors = [f"{r.source}: {r.message}" for r in batched if isinstance(r, ErrorRecord)]
        batched, sequential = (_no_faces_for_errors(run, images) for run in (batched, sequential))
        tie_px = float(limits["landmark_px_max"].value)  # the tier's pixel tolerance (SPEC keypoints px)
        detector = reference_detector()
        reference = [reference_faces(detector, image, ours, tie_px) for (_, image), ours in zip(images, cropped)]
        checks = detector_checks(reference, batched, limits, [name for name, _ in images])
        checks += batch_checks(batched, sequential, limits)
        total = sum(len(r) for r in batched)  # type: ignore[arg-type]
        moved, crops = sum(r.crops_following_ours for r in reference), sum(r.crops for r in reference)
        notes = [f"against facenet-pytorch 2.6.0 MTCNN.detect() on {len(images)} photographs "
                 f"({', '.join(n for n, _ in images)}): {sum(len(r.faces.probs) for r in reference)} reference "
                 f"faces, {total} ours; {moved} of its {crops} R-Net/O-Net crop windows cut at our pixel (a box "
                 f"corner within {tie_px:g} px of ours, truncated to the neighbouring pixel)"]
        notes += [f"no faces counted for {error}" for error in errors]
        return checks, notes


def _no_faces_for_errors(results: Sequence[Result], images: Sequence[tuple[str, np.ndarray]]) -> list[Result]:
    """The results with each error record (a non-finite stage output) as an image without faces."""
    return [FacesResult(r.source, image.shape[:2], np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                        np.zeros((0, 5, 2), np.float32)) if isinstance(r, ErrorRecord) else r
            for r, (_, image) in zip(results, images)]


def detector_checks(reference: Sequence[ReferenceFaces], results: Sequence[Result], limits: dict[str, Any],
                    names: Sequence[str]) -> list[Check]:
    """Matched IoU min, probability abs max, landmark px max, recall and precision over images;
    each pair measured against the tied candidate of the reference face ours agrees with best."""
    margin = 2.0 * float(limits["detect_prob_abs_max"].value)
    ious, prob_err, px_err = [], [], []
    ref_count = eng_count = matched = decided = 0
    worst = ""
    for name, ref, result in zip(names, reference, results):
        boxes = result.boxes.astype(np.float64)  # type: ignore[attr-defined]
        groups = ref.tied(margin, ONET_NMS_OVERLAP)
        rows, cols = match_tied(ref.candidates.boxes, groups, boxes)
        ref_count, eng_count, matched = ref_count + len(ref.faces.boxes), eng_count + len(boxes), matched + len(rows)
        if len(rows):
            cand = ref.candidates
            picked = np.asarray([closest_tied(cand, groups[r], boxes[c], result.probs[c],  # type: ignore[attr-defined]
                                              result.landmarks[c], limits) for r, c in zip(rows, cols)])  # type: ignore[attr-defined]
            decided += sum(int(p != groups[r][0]) for r, p in zip(rows, picked))
            iou = np.diag(pairwise_iou(cand.boxes[picked], boxes[cols]))
            ious.extend(iou)
            prob_err.extend(np.abs(cand.probs[picked] - result.probs[cols]))  # type: ignore[attr-defined]
            px_err.extend(np.linalg.norm(cand.points[picked] - result.landmarks[cols], axis=-1).max(axis=1))  # type: ignore[attr-defined]
            if iou.min() <= min(ious):
                worst = name
    recall = matched / ref_count if ref_count else 1.0
    precision = matched / eng_count if eng_count else 1.0
    ties = (f"{decided} of {matched} matched faces decided among near-tied reference candidates (probability "
            f"within {margin:.3g}, 'Min' overlap > {ONET_NMS_OVERLAP})")
    return [
        Check("face_recall", recall, limits["face_recall"], f"{matched} of {ref_count} reference faces matched"),
        Check("face_precision", precision, limits["face_precision"], f"{matched} of {eng_count} of ours matched"),
        Check("matched_iou_min", float(min(ious)) if ious else float("nan"), limits["matched_iou_min"],
              f"{len(ious)} pairs, worst in {worst or '-'}; {ties}"),
        Check("face_prob_abs_max", float(max(prob_err)) if prob_err else float("nan"),
              limits["detect_prob_abs_max"], "matched faces"),
        Check("landmark_px_max", float(max(px_err)) if px_err else float("nan"), limits["landmark_px_max"],
              "largest distance of one of the 5 landmarks, original pixels"),
    ]


def batch_checks(batched: Sequence[Result], sequential: Sequence[Result], limits: dict[str, Any]) -> list[Check]:
    """The batch run against each image run alone: the same faces (count) and values."""
    checks = []
    for field, key in (("boxes", "detect_batch_boxes_max_abs"), ("probs", "detect_batch_probs_max_abs"),
                       ("landmarks", "detect_batch_landmarks_max_abs")):
        worst = 0.0
        for a, b in zip(batched, sequential):
            x, y = getattr(a, field), getattr(b, field)
            worst = max(worst, float(np.max(np.abs(x - y))) if x.shape == y.shape and x.size else
                        (0.0 if x.shape == y.shape else float("inf")))
        checks.append(Check(f"batch_vs_sequential[{field}]", worst, limits[key],
                            f"{len(batched)} images in one batch against one at a time"))
    return checks


register_family(MtcnnParity())
