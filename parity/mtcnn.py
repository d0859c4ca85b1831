"""Parity of the MTCNN family at two levels.

Each network (``mtcnn_pnet``/``rnet``/``onet``): raw outputs against the PyTorch module on real
inputs (photographs as a P-Net pyramid level, LFW face and non-face crops for R-Net/O-Net),
plus the face probability error and agreement on the stage's threshold decision.

The detector (``mtcnn``): the runtime's three-stage pipeline on real photographs against
facenet-pytorch's own ``MTCNN.detect`` (an implementation written elsewhere, with the same
trained weights): faces matched by IoU, then matched IoU, probability error, landmark pixel
error, recall and precision; and the pipeline's batched results against the same images run one
at a time.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
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
from batchforge.parity.session import EvalItem, EvalSet, FamilyParity, ModelContext, ParitySession, ReferenceRun
from batchforge.runtime.artifacts import Precision
from batchforge.runtime.loading import load_pipeline
from batchforge.runtime.post import mtcnn as post
from batchforge.runtime.results import Result
from batchforge.runtime.spec import EnsembleSpec, ModelSpec
from batchforge.tolerances import limits_for

STAGE_EVAL_SIZE = {"pnet": 6, "rnet": 96, "onet": 96}
PHOTOGRAPHS = 6  # astronaut, camera and 4 LFW mosaics
MATCH_IOU = 0.5  # a face of ours and one of facenet-pytorch's are the same face at IoU >= 0.5
THRESHOLDS = {"pnet": 0.6, "rnet": 0.7, "onet": 0.7}  # facenet-pytorch's defaults


def reference_detector() -> Any:
    """facenet-pytorch's MTCNN with its own weights (CPU, every face, best first)."""
    try:
        from facenet_pytorch import MTCNN
    except ImportError as exc:
        raise ParityError(f"the mtcnn reference is facenet-pytorch's detect(), which cannot be imported: {exc}",
                          hint="run scripts/setup_venv.sh (it installs facenet-pytorch==2.6.0 --no-deps)") from None
    return MTCNN(keep_all=True, select_largest=False, device="cpu").eval()


def reference_faces(detector: Any, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes (K, 4), probabilities (K,), landmarks (K, 5, 2)) of facenet-pytorch's detect()."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its own deprecations are not ours to fail on
        boxes, probs, points = detector.detect(image, landmarks=True)
    if boxes is None:
        return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
    return (np.asarray(boxes, np.float64), np.asarray(probs, np.float64), np.asarray(points, np.float64))


def match_faces(ref_boxes: np.ndarray, eng_boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian matching maximising IoU; pairs need IoU >= MATCH_IOU."""
    if not len(ref_boxes) or not len(eng_boxes):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    iou = pairwise_iou(np.asarray(ref_boxes, np.float64), np.asarray(eng_boxes, np.float64))
    rows, cols = linear_sum_assignment(np.where(iou >= MATCH_IOU, iou, 0.0), maximize=True)
    valid = iou[rows, cols] >= MATCH_IOU
    return rows[valid], cols[valid]


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
        cut = THRESHOLDS[stage]
        agree = float(np.mean((ref > cut) == (eng > cut)))
        checks = [Check("face_prob_abs_max", float(np.max(np.abs(ref - eng))), ctx.limits["face_prob_abs_max"],
                        f"{ref.size} probabilities"),
                  Check("threshold_agreement", agree, ctx.limits["threshold_agreement"],
                        f"same side of {stage}'s {cut} on {ref.size} probabilities")]
        if "landmarks" in ctx.spec.outputs:
            err = np.abs(ctx.reference.raw["landmarks"] - ctx.engine.raw["landmarks"]) * 48.0
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
        reference = self._reference(session, images)
        pipeline = load_pipeline(ensemble.name, output_dir=session.output_dir, precision=precision,
                                 backend=session.backend, threads=session.threads)
        with pipeline:
            prepared = [pipeline.prepare(image, name) for name, image in images]
            batched = pipeline.run_prepared(prepared)
            sequential = [pipeline.run_prepared([p])[0] for p in prepared]
        checks = detector_checks(reference.metas, batched, limits, [name for name, _ in images])
        checks += batch_checks(batched, sequential, limits)
        total = sum(len(r) for r in batched)  # type: ignore[arg-type]
        notes = [f"against facenet-pytorch 2.6.0 MTCNN.detect() on {len(images)} photographs "
                 f"({', '.join(n for n, _ in images)}): {sum(len(m[1]) for m in reference.metas)} reference "
                 f"faces, {total} ours"]
        return checks, notes

    def _reference(self, session: ParitySession, images: list[tuple[str, np.ndarray]]) -> ReferenceRun:
        key = ("mtcnn:facenet-pytorch", "|".join(n for n, _ in images))
        runs = session._reference_runs  # shared by every precision of one run, like the stage references
        if key not in runs:
            detector = reference_detector()
            runs[key] = ReferenceRun({}, [reference_faces(detector, image) for _, image in images])
        return runs[key]


def detector_checks(reference: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], results: Sequence[Result],
                    limits: dict[str, Any], names: Sequence[str]) -> list[Check]:
    """Matched IoU min, probability abs max, landmark px max, recall and precision over images."""
    ious, prob_err, px_err = [], [], []
    ref_count = eng_count = matched = 0
    worst = ""
    for name, (ref_boxes, ref_probs, ref_points), result in zip(names, reference, results):
        rows, cols = match_faces(ref_boxes, result.boxes)  # type: ignore[attr-defined]
        ref_count, eng_count, matched = ref_count + len(ref_boxes), eng_count + len(result), matched + len(rows)  # type: ignore[arg-type]
        if len(rows):
            iou = np.diag(pairwise_iou(ref_boxes[rows], result.boxes[cols].astype(np.float64)))  # type: ignore[attr-defined]
            ious.extend(iou)
            prob_err.extend(np.abs(ref_probs[rows] - result.probs[cols]))  # type: ignore[attr-defined]
            px = np.linalg.norm(ref_points[rows] - result.landmarks[cols], axis=-1).max(axis=1)  # type: ignore[attr-defined]
            px_err.extend(px)
            if iou.min() <= min(ious):
                worst = name
    recall = matched / ref_count if ref_count else 1.0
    precision = matched / eng_count if eng_count else 1.0
    return [
        Check("face_recall", recall, limits["face_recall"], f"{matched} of {ref_count} reference faces matched"),
        Check("face_precision", precision, limits["face_precision"], f"{matched} of {eng_count} of ours matched"),
        Check("matched_iou_min", float(min(ious)) if ious else float("nan"), limits["matched_iou_min"],
              f"{len(ious)} pairs, worst in {worst or '-'}"),
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
